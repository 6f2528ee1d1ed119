package app

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tokengate/tokengate/internal/config"
)

// errNoConfigFile means the gateway was not started from a file, so there
// is nothing to reload.
var errNoConfigFile = errors.New("this gateway was not started from a config file (tokengate serve --config FILE), so there is nothing to reload")

// errShuttingDown refuses reloads once shutdown has begun.
var errShuttingDown = errors.New("the gateway is shutting down; reload refused")

// reloadStatus is the outcome of the last reload attempt, for
// /admin/config and the log.
type reloadStatus struct {
	// At is when the last attempt ended; OK whether it was applied.
	At time.Time `json:"at"`
	OK bool      `json:"ok"`
	// Trigger is what started it: start, sighup, file, api.
	Trigger string `json:"trigger"`
	// Errors lists every problem of a rejected file.
	Errors []string `json:"errors,omitempty"`
	// LoadedAt is when the config now serving was applied.
	LoadedAt time.Time `json:"loaded_at"`
	// RestartRequired names changed sections that only a restart applies.
	RestartRequired []string `json:"restart_required,omitempty"`
	hash            [32]byte // of the file last attempted
}

// Reload reads the config file again and, when it is valid and its runtime
// builds, swaps the new runtime in: requests in flight finish on the old
// one, which is closed after its last request. Breaker state and limit
// counters carry over for backends and apps that still exist. A bad file
// changes nothing: the error lists every problem, and the log, metrics and
// /admin/config show it. trigger names the cause for the log.
func (g *Gateway) Reload(trigger string) error {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	return g.reload(trigger, nil)
}

// reload does Reload's work under reloadMu. When unchanged is not nil, a
// file whose content hashes the same as the last attempt is skipped
// (file-watch events that changed nothing) and *unchanged says so.
func (g *Gateway) reload(trigger string, unchanged *bool) error {
	if g.opts.path == "" {
		return errNoConfigFile
	}
	if g.closing {
		return errShuttingDown
	}
	data, err := os.ReadFile(g.opts.path)
	if err != nil {
		return g.reloadFailed(trigger, fmt.Errorf("config: %w", err))
	}
	sum := sha256.Sum256(data)
	if unchanged != nil && sum == g.reloads.hash {
		*unchanged = true
		return nil
	}
	g.reloads.hash = sum
	cfg, err := config.Parse(data, os.LookupEnv)
	if err != nil {
		return g.reloadFailed(trigger, fmt.Errorf("%s: %w", g.opts.path, err))
	}
	if insecure := cfg.InsecureIssuers(); len(insecure) > 0 && !g.opts.insecureIssuer {
		return g.reloadFailed(trigger, fmt.Errorf("identity trusts plain-http issuers %v: the gateway was not started with --insecure-dev-issuer", insecure))
	}
	if g.opts.override != nil {
		g.opts.override(cfg)
	}
	restart := keepBoot(cfg, g.boot)
	if cfg.AdminExposed() && len(cfg.Admin.Keys) == 0 && cfg.Admin.Role == "" {
		// The listener stays where it started: it would lock everyone out.
		return g.reloadFailed(trigger, fmt.Errorf("admin: the admin listener %s is exposed (since start): keep admin.keys or admin.role", cfg.Listen.AdminAddr))
	}
	prev := g.rt.Load()
	rt, err := g.newRuntime(cfg, prev)
	if err != nil {
		return g.reloadFailed(trigger, err)
	}
	rt.takeOver(prev)
	g.rt.Store(rt)
	prev.retire()
	g.retired = slices.DeleteFunc(g.retired, func(r *runtime) bool {
		select {
		case <-r.closed:
			return true
		default:
			return false
		}
	})
	g.retired = append(g.retired, prev)
	now := time.Now().UTC()
	g.reloads = reloadStatus{At: now, OK: true, Trigger: trigger, LoadedAt: now, RestartRequired: restart, hash: sum}
	g.metrics.Reload(true, now)
	attrs := []any{slog.String("trigger", trigger), slog.String("file", g.opts.path), slog.Int("backends", len(cfg.Backends)), slog.Int("apps", len(cfg.Apps))}
	if len(restart) > 0 {
		attrs = append(attrs, slog.Any("restart_required", restart))
	}
	g.log.Info("config reloaded", attrs...)
	return nil
}

func (g *Gateway) reloadFailed(trigger string, err error) error {
	now := time.Now().UTC()
	var problems []string
	for _, line := range strings.Split(err.Error(), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			problems = append(problems, line)
		}
	}
	g.reloads.At, g.reloads.OK, g.reloads.Trigger, g.reloads.Errors = now, false, trigger, problems
	g.metrics.Reload(false, now)
	g.log.Error("config reload rejected; the last good config keeps serving",
		slog.String("trigger", trigger), slog.String("file", g.opts.path), slog.Any("problems", problems))
	return err
}

// keepBoot gives cfg the boot config's sections that only a restart
// changes (listeners, the usage spool and sinks, telemetry, logging, file
// watching, profiling), so the runtime's config is what actually runs, and names those that differ.
func keepBoot(cfg, boot *config.Config) []string {
	var differ []string
	keep := func(name string, dst, src any) {
		d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
		if !reflect.DeepEqual(d.Interface(), s.Interface()) {
			differ = append(differ, name)
		}
		d.Set(s)
	}
	keep("listen", &cfg.Listen, &boot.Listen)
	keep("usage.spool", &cfg.Usage.Spool, &boot.Usage.Spool)
	keep("usage.sinks", &cfg.Usage.Sinks, &boot.Usage.Sinks)
	keep("usage.drain_timeout", &cfg.Usage.DrainTimeout, &boot.Usage.DrainTimeout)
	keep("telemetry", &cfg.Telemetry, &boot.Telemetry)
	keep("log", &cfg.Log, &boot.Log)
	keep("reload", &cfg.Reload, &boot.Reload)
	keep("admin.profiling", &cfg.Admin.Profiling, &boot.Admin.Profiling)
	return differ
}

// watchReloads reloads on SIGHUP and, unless reload.watch is false, when
// the config file changes, until ctx is done; the returned channel closes
// when it has stopped. It watches the file's directory, so an editor's or
// a deploy's atomic rename-replace (and Kubernetes' ConfigMap symlink
// swap) is seen.
//
// hup delivers SIGHUP; the caller keeps it registered until the process
// is done, so a SIGHUP during the shutdown drain is ignored rather than
// killing the process with its default action.
func (g *Gateway) watchReloads(ctx context.Context, hup <-chan os.Signal) <-chan struct{} {
	done := make(chan struct{})
	if g.opts.path == "" {
		close(done)
		return done
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	var w *fsnotify.Watcher
	if g.boot.Reload.WatchEnabled() {
		var err error
		if w, err = fsnotify.NewWatcher(); err == nil {
			err = w.Add(filepath.Dir(g.opts.path))
		}
		if err != nil {
			g.log.Warn("config file changes will not be watched; reload with SIGHUP or POST /admin/reload", slog.Any("error", err))
		} else {
			events, errs = w.Events, w.Errors
		}
	}
	go func() {
		defer close(done)
		if w != nil {
			defer w.Close()
		}
		const settle = 200 * time.Millisecond // writes come in bursts
		var debounce <-chan time.Time
		base := filepath.Base(g.opts.path)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = g.Reload("sighup")
			case ev := <-events:
				if name := filepath.Base(ev.Name); name == base || name == "..data" {
					debounce = time.After(settle)
				}
			case err := <-errs:
				g.log.Warn("watching the config file", slog.Any("error", err))
			case <-debounce:
				debounce = nil
				g.reloadMu.Lock()
				var unchanged bool
				_ = g.reload("file", &unchanged)
				g.reloadMu.Unlock()
			}
		}
	}()
	return done
}
