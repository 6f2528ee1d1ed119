package app

import (
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/tokengate/tokengate/internal/auth"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/devissuer"
)

// runDevToken prints a token for a demo app from the dev issuer in the
// demo's data directory; the token alone is the last line.
func runDevToken(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dev-token", stderr)
	app := fs.String("app", "", "demo app name, e.g. chat-app or batch-app (required)")
	dataDir := fs.String("data-dir", defaultDataDir, "the demo's data directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *app == "" || fs.NArg() > 0 {
		return usageError("tokengate dev-token --app NAME [--data-dir DIR]")
	}
	tok, err := devissuer.MintFromDir(*dataDir, *app, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# development token for %s, valid %v (send it as Authorization: Bearer <token>)\n%s\n",
		*app, devissuer.TokenLifetime, tok)
	return nil
}

// defaultConfigPath is $TOKENGATE_CONFIG, else tokengate.yaml in the
// working directory, so "tokengate keys create --app NAME" works beside the
// config.
func defaultConfigPath() string {
	if p := os.Getenv("TOKENGATE_CONFIG"); p != "" {
		return p
	}
	return "tokengate.yaml"
}

// runKeys manages gateway keys: create (printed once), list, revoke.
func runKeys(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("tokengate keys create|list|revoke [--config FILE] ...")
	}
	sub := args[0]
	fs := newFlags("keys "+sub, stderr)
	path := fs.String("config", defaultConfigPath(), "the gateway's config file ($TOKENGATE_CONFIG, else ./tokengate.yaml)")
	app := fs.String("app", "", "app name (create)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	gk := cfg.Identity.GatewayKeys
	if !gk.Enabled {
		return fmt.Errorf("gateway keys are disabled in %s: set identity.gateway_keys.enabled and file", *path)
	}
	now := time.Now()
	switch sub {
	case "create":
		if *app == "" || fs.NArg() > 0 {
			return usageError("tokengate keys create --app NAME [--config FILE]")
		}
		if !slices.ContainsFunc(cfg.Apps, func(a config.App) bool { return a.Name == *app }) {
			return fmt.Errorf("no app %q in %s: register it under apps first", *app, *path)
		}
		key, err := auth.CreateKey(gk.File, *app, now)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "# gateway key for %s: shown once, store it now (send it as api-key: <key>)\n%s\n", *app, key)
	case "list":
		keys, err := auth.ListKeys(gk.File)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PREFIX\tAPP\tCREATED\tREVOKED")
		for _, k := range keys {
			revoked := "-"
			if !k.Revoked.IsZero() {
				revoked = k.Revoked.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Prefix, k.App, k.Created.Format(time.RFC3339), revoked)
		}
		return tw.Flush()
	case "revoke":
		if fs.NArg() != 1 {
			return usageError("tokengate keys revoke [--config FILE] PREFIX")
		}
		if err := auth.RevokeKey(gk.File, fs.Arg(0), now); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s\n", fs.Arg(0))
	default:
		return usageError("unknown keys command %q (create, list, revoke)", sub)
	}
	return nil
}
