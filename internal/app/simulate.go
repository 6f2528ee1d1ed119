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
	log := slog.New(slog.NewTextHandler(stderr, nil))
	for _, ic := range cfg.Instances {
		inst, err := simulator.New(ic, log.With(slog.String("simulator", ic.Name)))
		if err != nil {
			return err
		}
		url, err := inst.Start()
		if err != nil {
			return fmt.Errorf("simulator %s: %w", ic.Name, err)
		}
		defer inst.Close(context.WithoutCancel(ctx))
		fmt.Fprintf(stdout, "%-24s %s\n", ic.Name, url)
	}
	<-ctx.Done()
	return nil
}
