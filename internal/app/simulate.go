package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/tokengate/tokengate/internal/simulator"
)

// runSimulate serves the simulated Azure OpenAI instances of a simulator
// config until ctx is done.
func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("simulate", stderr)
	path := fs.String("config", "", "path to the simulator's YAML config (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || fs.NArg() > 0 {
		return usageError("tokengate simulate --config FILE")
	}
	cfg, err := simulator.LoadConfig(*path)
	if err != nil {
		return err
	}
	insts, stop, err := startSimulators(cfg, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	defer stop(context.WithoutCancel(ctx))
	for _, inst := range insts {
		fmt.Fprintf(stdout, "%-24s %s\n", inst.Name(), inst.URL())
	}
	<-ctx.Done()
	return nil
}

// startSimulators starts every instance of cfg on its listen address. On
// error the ones already started are closed; otherwise stop closes them all.
func startSimulators(cfg simulator.Config, log *slog.Logger) ([]*simulator.Instance, func(context.Context), error) {
	var insts []*simulator.Instance
	stop := func(ctx context.Context) {
		for _, inst := range insts {
			_ = inst.Close(ctx)
		}
	}
	for _, ic := range cfg.Instances {
		inst, err := simulator.New(ic, log.With(slog.String("simulator", ic.Name)))
		if err == nil {
			_, err = inst.Start()
		}
		if err != nil {
			stop(context.Background())
			return nil, nil, fmt.Errorf("simulator %s: %w", ic.Name, err)
		}
		insts = append(insts, inst)
	}
	return insts, stop, nil
}
