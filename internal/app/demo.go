package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokengate/tokengate/examples"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/devissuer"
	"github.com/tokengate/tokengate/internal/simulator"
)

// defaultDataDir is where the demo keeps everything it writes.
const defaultDataDir = "./.tokengate-demo"

// runDemo starts three simulated Azure OpenAI instances and a development
// identity issuer on free loopback ports, the gateway in front of them,
// prints what to paste to try it, and runs until ctx is done.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "gateway address")
	adminAddr := fs.String("admin-addr", "127.0.0.1:8081", "admin address (health, later metrics and /admin)")
	dataDir := fs.String("data-dir", defaultDataDir, "directory for everything the demo writes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	log, flush := bufferedLogger(stderr, func(w io.Writer) slog.Handler {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})
	})
	defer flush()

	simCfg, err := simulator.ParseConfig(examples.DemoSimulator)
	if err != nil {
		return fmt.Errorf("demo simulator config: %w", err)
	}
	for i := range simCfg.Instances {
		simCfg.Instances[i].Listen = "127.0.0.1:0" // free ports: two demos never collide
	}
	insts, stop, err := startSimulators(simCfg, log)
	if err != nil {
		return err
	}
	defer stop(context.WithoutCancel(ctx))
	issuer, err := devissuer.Start(*dataDir, log.With(slog.String("component", "dev-issuer")))
	if err != nil {
		return err
	}
	defer issuer.Close(context.WithoutCancel(ctx))

	vars := map[string]string{
		"DEV_ISSUER_URL": issuer.State().URL,
		"DEV_TENANT":     devissuer.Tenant,
		"DATA_DIR":       *dataDir,
		"ADDR":           *addr,
		"ADMIN_ADDR":     *adminAddr,
	}
	for i, inst := range insts {
		env := strings.ToUpper(strings.ReplaceAll(inst.Name(), "-", "_"))
		vars[env+"_URL"] = inst.URL()
		vars[env+"_KEY"] = simCfg.Instances[i].APIKey
	}
	// The demo serves a file, like serve does, so editing it hot-reloads.
	cfgPath := filepath.Join(*dataDir, "tokengate.yaml")
	if err := writeDemoConfig(cfgPath, vars); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	apps := map[string]string{}
	for _, a := range cfg.Apps {
		apps[a.Name] = a.AppIDs[0]
	}
	if err := issuer.Publish(cfg.Identity.Audiences[0], apps); err != nil {
		return err
	}
	token, err := issuer.Mint("chat-app", time.Now())
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(*dataDir)
	return serveGateway(ctx, cfg, log, func(addr, admin string) {
		printDemo(stdout, demoBanner{
			Base: "http://" + addr, Admin: admin, DataDir: abs, DataDirFlag: *dataDir,
			Token: token, APIVersion: config.DefaultAPIVersion, Sims: insts, Config: cfgPath,
		})
	}, WithConfigFile(cfgPath, true, nil))
}

// writeDemoConfig writes the embedded demo config with its ${...} values
// filled in (comment lines are kept as they are) to path.
func writeDemoConfig(path string, vars map[string]string) error {
	lines := strings.SplitAfter(string(examples.Demo), "\n")
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		v, err := config.Expand(line, func(name string) (string, bool) {
			v, ok := vars[name]
			return v, ok
		})
		if err != nil {
			return fmt.Errorf("demo config line %d: %w", i+1, err)
		}
		lines[i] = v
	}
	header := "# Written by tokengate demo from examples/demo.yaml. Edit and save: the gateway reloads it.\n"
	if err := os.WriteFile(path, []byte(header+strings.Join(lines, "")), 0o600); err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	return nil
}

type demoBanner struct {
	Base, Admin, DataDir, DataDirFlag, Token, APIVersion, Config string
	Sims                                                         []*simulator.Instance
}

func printDemo(w io.Writer, b demoBanner) {
	fmt.Fprintf(w, "\ntokengate demo is running.\n\n  gateway      %s\n  admin        http://%s  (/metrics, /admin/backends, /admin/apps, /admin/config)\n  config       %s  (edit and save: it reloads)\n  data dir     %s\n",
		b.Base, b.Admin, b.Config, b.DataDir)
	for _, s := range b.Sims {
		fmt.Fprintf(w, "  simulated    %-20s %s\n", s.Name(), s.URL())
	}
	devToken := "go run ./cmd/tokengate dev-token"
	if b.DataDirFlag != defaultDataDir {
		devToken += " --data-dir " + b.DataDirFlag
	}
	report := "go run ./cmd/tokengate usage report"
	r := strings.NewReplacer("{config}", b.Config, "{report}", report, "{usagedb}", filepath.Join(b.DataDirFlag, "usage.db"), "{base}", b.Base, "{v}", b.APIVersion, "{token}", b.Token, "{devtoken}", devToken, "{admin}", b.Admin)
	fmt.Fprint(w, r.Replace(`
Model aliases: gpt-4o, gpt-4o-mini (chat), text-embedding-3-small (embeddings).
Apps: chat-app (inference, streaming) and batch-app (no streaming, max_tokens <= 256, 5 requests a minute).
Every call needs a bearer token; api-key is refused. In another terminal:

  # a token for chat-app, valid 1 hour (or: {devtoken} --app chat-app | tail -1)
  export TOKEN={token}

  # a chat completion, Azure style
  curl -s '{base}/openai/deployments/gpt-4o/chat/completions?api-version={v}' \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}'

  # the same, streamed (OpenAI style: model in the body)
  curl -sN {base}/v1/chat/completions -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'

  # batch-app may make 5 requests a minute: the 6th gets 429 with retry-after and x-ratelimit-* headers
  export BATCH=$({devtoken} --app batch-app | tail -1)
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' {base}/v1/chat/completions -H "Authorization: Bearer $BATCH" \
    -H 'Content-Type: application/json' -d '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'; done; echo
  curl -si {base}/v1/chat/completions -H "Authorization: Bearer $BATCH" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}' | grep -iE '^(HTTP|retry-after|x-ratelimit)'

  # batch-app may not stream: 400 streaming_disabled
  curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' -H "Authorization: Bearer $BATCH" \
    -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'

  # Python (pip install openai)
  python3 -c 'import os; from openai import AzureOpenAI
  c = AzureOpenAI(azure_endpoint="{base}", api_version="{v}", azure_ad_token=os.environ["TOKEN"])
  for ch in c.chat.completions.create(model="gpt-4o", stream=True, messages=[{"role":"user","content":"Say hello"}]):
      print(ch.choices[0].delta.content or "" if ch.choices else "", end="", flush=True)
  print()'

  // JavaScript (npm install openai), in an .mjs file
  import { AzureOpenAI } from "openai";
  const c = new AzureOpenAI({ endpoint: "{base}", apiVersion: "{v}", azureADTokenProvider: async () => process.env.TOKEN });
  const s = await c.chat.completions.create({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: "Say hello" }] });
  for await (const ch of s) process.stdout.write(ch.choices[0]?.delta?.content ?? "");

  // Go (go get github.com/openai/openai-go/v3): the v1 client sends the token as a bearer
  c := openai.NewClient(option.WithBaseURL("{base}/openai/v1/"), option.WithAPIKey(os.Getenv("TOKEN")))
  s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o",
      Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")}})
  for s.Next() { if ch := s.Current(); len(ch.Choices) > 0 { fmt.Print(ch.Choices[0].Delta.Content) } }

  # which backend served it, and every backend's breaker and rate-limit state
  curl -si ... | grep -i x-tokengate-backend;  curl -s http://{admin}/admin/backends

  # chargebacks: requests, tokens and cost per app and model (exact, streams included)
  {report} --db sqlite:{usagedb} --group-by app,model
  curl -s 'http://{admin}/admin/usage/summary?group_by=app,model'     # the same numbers, from the admin API

  # operations: Prometheus metrics, apps with their limits and current usage
  curl -s http://{admin}/metrics | grep -E '^tokengate_(tokens|requests)_total'
  curl -s http://{admin}/admin/apps

  # hot reload: edit {config} (say batch-app's rpm: 5 -> 10) and save,
  # or send SIGHUP, or: curl -s -X POST http://{admin}/admin/reload

Press Ctrl-C to stop.
`))
}
