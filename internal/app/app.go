// Package app wires tokengate together: the command line, the gateway's
// request pipeline (assembled in one place, gateway.go), the demo and the
// simulator command.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/tokengate/tokengate/internal/config"
)

const helpText = `tokengate — an Azure OpenAI-compatible AI gateway

Usage:
  tokengate demo [--addr A] [--admin-addr A] [--data-dir DIR]
                                   run the gateway with three simulated Azure OpenAI instances
  tokengate serve --config FILE [--insecure-dev-issuer]
                                   run the gateway
  tokengate dev-token --app NAME [--data-dir DIR]
                                   print a bearer token for a demo app
  tokengate keys create --app NAME | list | revoke PREFIX  [--config FILE]
                                   manage gateway keys (when identity.gateway_keys is enabled)
  tokengate usage report --db sqlite:PATH|postgres://... | --config FILE
        [--from T] [--to T] [--group-by app,team,model,backend] [--format table|csv|json]
                                   chargeback report from the usage store
  tokengate simulate --config FILE run simulated Azure OpenAI instances
  tokengate loadtest --url BASE (--rate R | --concurrency N) [--stream-share F] [--mix FILE] [--json]
                                   load-test any Azure OpenAI-compatible endpoint and report latency and throughput
  tokengate config validate FILE   check a config file and list every problem
  tokengate version                print the version

Run "tokengate COMMAND --help" for a command's flags.
`

// Run executes the command line args (without the program name) and returns
// the process exit code. ctx is cancelled on SIGINT/SIGTERM.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, helpText)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], stderr)
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "simulate":
		err = runSimulate(ctx, args[1:], stdout, stderr)
	case "loadtest":
		err = runLoadtest(ctx, args[1:], stdout, stderr)
	case "config":
		err = runConfig(args[1:], stdout)
	case "dev-token":
		err = runDevToken(args[1:], stdout, stderr)
	case "keys":
		err = runKeys(args[1:], stdout, stderr)
	case "usage":
		err = runUsage(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, versionLine())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, helpText)
		return 0
	default:
		fmt.Fprintf(stderr, "tokengate: unknown command %q\n\n%s", args[0], helpText)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "tokengate:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "tokengate:", err)
		return 1
	}
}

var errUsage = errors.New("usage")

func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// versionLine is "tokengate VERSION (REVISION, GOVERSION)", with what
// the build recorded.
func versionLine() string {
	rev, goVersion := "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = s.Value[:12]
			}
		}
	}
	return fmt.Sprintf("tokengate %s (%s, %s)", version(), rev, goVersion)
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tokengate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func runConfig(args []string, stdout io.Writer) error {
	if len(args) != 2 || args[0] != "validate" {
		return usageError("tokengate config validate FILE")
	}
	if _, err := config.Load(args[1]); err != nil {
		return fmt.Errorf("%s is not valid:\n  %s", args[1], strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	fmt.Fprintf(stdout, "%s is valid\n", args[1])
	return nil
}

func runServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	path := fs.String("config", "", "path to the YAML config file (required)")
	addr := fs.String("addr", "", "override listen.addr")
	adminAddr := fs.String("admin-addr", "", "override listen.admin_addr")
	insecureDev := fs.Bool("insecure-dev-issuer", false, "accept plain-http token issuers (the demo's development issuer); never in production")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || fs.NArg() > 0 {
		return usageError("tokengate serve --config FILE")
	}
	override := func(c *config.Config) {
		if *addr != "" {
			c.Listen.Addr = *addr
		}
		if *adminAddr != "" {
			c.Listen.AdminAddr = *adminAddr
		}
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	file := WithConfigFile(*path, *insecureDev, override) // right after loading: the watcher's baseline
	if insecure := cfg.InsecureIssuers(); len(insecure) > 0 && !*insecureDev {
		return fmt.Errorf("identity trusts plain-http issuers %v: that is only for the demo's development issuer; "+
			"pass --insecure-dev-issuer to accept it (never in production)", insecure)
	}
	override(cfg)
	if *addr != "" || *adminAddr != "" {
		if err := cfg.Validate(); err != nil { // e.g. an exposed admin address needs admin auth
			return err
		}
	}
	log, flush := newLogger(cfg.Log, stderr)
	defer flush()
	return serveGateway(ctx, cfg, log, nil, file)
}

// newLogger is the gateway's logger as c configures it, writing through a
// logBuffer, and the function that flushes it.
func newLogger(c config.Log, w io.Writer) (*slog.Logger, func()) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	return bufferedLogger(w, func(w io.Writer) slog.Handler {
		if c.Format == "text" {
			return slog.NewTextHandler(w, opts)
		}
		return slog.NewJSONHandler(w, opts)
	})
}
