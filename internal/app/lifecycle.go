package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokengate/tokengate/internal/balancer"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage"
)

// serveGateway listens on the configured addresses and serves until ctx is
// done, then shuts down in this order: /readyz turns unready,
// listen.shutdown_delay passes, the client listener stops accepting and
// in-flight requests (streams included) get listen.shutdown_timeout to
// finish, the usage spool is flushed and sinks get usage.drain_timeout,
// and last the admin listener closes (so /readyz and /metrics stay
// readable while the gateway drains). The error is non-nil when anything
// did not drain: requests cut, records left undelivered. started, when
// set, is called once both listeners are bound.
func serveGateway(ctx context.Context, cfg *config.Config, log *slog.Logger, started func(addr, admin string), opts ...GatewayOption) (err error) {
	// SIGHUP is handled from here until the process is done: its default
	// action would kill a gateway that is starting or draining.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	gw, err := NewGateway(cfg, log, opts...)
	if err != nil {
		return err
	}
	// Close runs after the client listener has drained, so every
	// request's record is in the spool.
	closeGateway := func() {
		if cerr := gw.Close(context.WithoutCancel(ctx)); cerr != nil {
			log.Error("shutdown incomplete", slog.Any("error", cerr))
			err = errors.Join(err, cerr)
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen.Addr)
	if err != nil {
		err = fmt.Errorf("listen on %s: %w", cfg.Listen.Addr, err)
		closeGateway()
		return err
	}
	var adminLn net.Listener
	adminAddr := ""
	if cfg.Listen.AdminAddr != "off" {
		if adminLn, err = net.Listen("tcp", cfg.Listen.AdminAddr); err != nil {
			ln.Close()
			err = fmt.Errorf("listen on %s (admin): %w", cfg.Listen.AdminAddr, err)
			closeGateway()
			return err
		}
		adminAddr = adminLn.Addr().String()
	}
	log.Info("tokengate listening", slog.String("addr", ln.Addr().String()), slog.String("admin_addr", adminAddr),
		slog.Int("backends", len(cfg.Backends)), slog.Int("models", len(cfg.Models)), slog.String("version", version()))

	// The client listener stops on ctx, or when the admin listener fails.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	adminDone := make(chan error, 1)
	if adminLn != nil {
		go func() {
			aerr := gw.ServeAdmin(adminCtx, adminLn)
			if aerr != nil {
				stop()
			}
			adminDone <- aerr
		}()
	} else {
		adminDone <- nil
	}
	watchDone := gw.watchReloads(sctx, hup)
	if started != nil {
		started(ln.Addr().String(), adminAddr)
	}
	err = gw.Serve(sctx, ln)
	stop() // the listener may have failed on its own: stop the watcher too
	<-watchDone
	closeGateway()
	stopAdmin()
	if aerr := <-adminDone; aerr != nil {
		err = errors.Join(err, fmt.Errorf("admin listener: %w", aerr))
	}
	log.Info("tokengate stopped", slog.Bool("clean", err == nil))
	return err
}

// Serve serves the gateway on ln until ctx is done; then it turns
// unready, waits listen.shutdown_delay, stops accepting and gives
// in-flight requests listen.shutdown_timeout to finish. Requests still
// running then are cut (their usage is still recorded) and the error says
// how many.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	lc := g.boot.Listen
	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: lc.ReadHeaderTimeout,
		IdleTimeout:       lc.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
		// No ReadTimeout or WriteTimeout: they would cut long streams. The
		// body read and each write get their own deadlines instead.
	}
	if err := serveUntil(ctx, srv, ln); err != nil {
		g.ready.Store(false)
		_ = srv.Close()
		return err
	}
	g.ready.Store(false)
	g.log.Info("draining: /readyz is unready", slog.Duration("shutdown_delay", lc.ShutdownDelay),
		slog.Duration("shutdown_timeout", lc.ShutdownTimeout), slog.Int64("in_flight", g.active.Load()))
	if lc.ShutdownDelay > 0 {
		time.Sleep(lc.ShutdownDelay) // load balancers notice before connections are refused
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lc.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	// Shutdown does not wait for upgraded (websocket) connections: wait
	// for their handlers within the same deadline.
	for err == nil && g.active.Load() > 0 {
		select {
		case <-sctx.Done():
			err = sctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err != nil {
		n := g.active.Load()
		g.cutting.Store(true)
		_ = srv.Close()
		return fmt.Errorf("shutdown: %d requests were still running after listen.shutdown_timeout (%s) and were cut", n, lc.ShutdownTimeout)
	}
	g.log.Info("drained: every request finished")
	return nil
}

// ServeAdmin serves the admin handler on ln until ctx is done.
func (g *Gateway) ServeAdmin(ctx context.Context, ln net.Listener) error {
	lc := g.boot.Listen
	srv := &http.Server{
		Handler:           g.AdminHandler(),
		ReadHeaderTimeout: lc.ReadHeaderTimeout,
		ReadTimeout:       lc.ReadTimeout,
		WriteTimeout:      lc.WriteTimeout,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	if err := serveUntil(ctx, srv, ln); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	return nil
}

// serveUntil serves srv on ln until ctx is done (nil: the caller shuts
// srv down) or the listener fails (the error).
func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	}
}

// Close releases the runtime (key refreshes, limiter, idle upstream
// connections), flushes the usage spool and drains its sinks (within
// usage.drain_timeout), and flushes traces. Call it after Serve has
// returned, so every request's record is in.
func (g *Gateway) Close(ctx context.Context) error {
	var errs []error
	// Requests cut by a shutdown timeout are still unwinding (their
	// connections are closed, so it is quick): let them record first.
	done := make(chan struct{})
	go func() { g.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		errs = append(errs, errors.New("requests still running at shutdown; their usage records may be lost"))
	}
	g.reloadMu.Lock() // no reload starts from here on
	g.closing = true
	cur := g.rt.Load()
	runtimes := append(g.retired, cur)
	g.retired = nil
	g.reloadMu.Unlock()
	cur.retire()
	for _, rt := range runtimes {
		select {
		case <-rt.closed:
			errs = append(errs, rt.closeErr)
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("a runtime was still in use at shutdown"))
		}
	}
	errs = append(errs, g.usage.Close(ctx))
	if err := g.tracing.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("traces: %w", err))
	}
	return errors.Join(errs...)
}

// gatewaySource answers the metrics read at scrape time, always for the
// current runtime.
type gatewaySource struct{ g *Gateway }

func (s gatewaySource) Backends() []balancer.Snapshot { return s.g.rt.Load().balancer.Snapshot() }
func (s gatewaySource) Usage() usage.Status           { return s.g.usage.Status() }
func (s gatewaySource) UsageNearFull() bool           { return s.g.usage.NearFull() }
func (s gatewaySource) LimitStoreErrors() uint64      { return s.g.rt.Load().limiter.StoreErrors() }
func (s gatewaySource) InFlight() int64               { return s.g.active.Load() }
