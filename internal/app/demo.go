package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokengate/tokengate/examples"
	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/simulator"
)

// runDemo starts three simulated Azure OpenAI instances on free loopback
// ports and the gateway in front of them, prints what to paste to try it,
// and runs until ctx is done.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "gateway address")
	adminAddr := fs.String("admin-addr", "127.0.0.1:8081", "admin address (health, later metrics and /admin)")
	dataDir := fs.String("data-dir", "./.tokengate-demo", "directory for everything the demo writes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

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
	vars := map[string]string{}
	for i, inst := range insts {
		env := strings.ToUpper(strings.ReplaceAll(inst.Name(), "-", "_"))
		vars[env+"_URL"] = inst.URL()
		vars[env+"_KEY"] = simCfg.Instances[i].APIKey
	}

	cfg, err := config.Parse(examples.Demo, func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	})
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	cfg.Listen.Addr, cfg.Listen.AdminAddr = *addr, *adminAddr
	if err := cfg.Validate(); err != nil {
		return err
	}
	abs, _ := filepath.Abs(*dataDir)
	return serveGateway(ctx, cfg, log, func(addr, admin string) {
		printDemo(stdout, "http://"+addr, admin, abs, simCfg, vars)
	})
}

func printDemo(w io.Writer, base, admin, dataDir string, sims simulator.Config, vars map[string]string) {
	fmt.Fprintf(w, `
tokengate demo is running.

  gateway      %[1]s
  admin        http://%[2]s  (health: /healthz, /readyz)
  data dir     %[3]s
`, base, admin, dataDir)
	for _, ic := range sims.Instances {
		env := strings.ToUpper(strings.ReplaceAll(ic.Name, "-", "_"))
		fmt.Fprintf(w, "  simulated    %-20s %s\n", ic.Name, vars[env+"_URL"])
	}
	fmt.Fprintf(w, `
Model aliases: gpt-4o, gpt-4o-mini (chat), text-embedding-3-small (embeddings).

Try it (in another terminal):

  # a chat completion, Azure style
  curl -s '%[1]s/openai/deployments/gpt-4o/chat/completions?api-version=%[2]s' \
    -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}'

  # the same, streamed (OpenAI style: model in the body)
  curl -sN %[1]s/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'

  # Python (pip install openai)
  python3 -c 'from openai import AzureOpenAI
  c = AzureOpenAI(azure_endpoint="%[1]s", api_version="%[2]s", api_key="unused")
  for ch in c.chat.completions.create(model="gpt-4o", stream=True, messages=[{"role":"user","content":"Say hello"}]):
      print(ch.choices[0].delta.content or "" if ch.choices else "", end="", flush=True)
  print()'

  // JavaScript (npm install openai), in an .mjs file
  import { AzureOpenAI } from "openai";
  const c = new AzureOpenAI({ endpoint: "%[1]s", apiVersion: "%[2]s", apiKey: "unused" });
  const s = await c.chat.completions.create({ model: "gpt-4o", stream: true, messages: [{ role: "user", content: "Say hello" }] });
  for await (const ch of s) process.stdout.write(ch.choices[0]?.delta?.content ?? "");

  // Go (go get github.com/openai/openai-go/v3)
  c := openai.NewClient(azure.WithEndpoint("%[1]s", "%[2]s"), azure.WithAPIKey("unused"),
      azure.WithUnsafeAllowHTTP()) // plain http is allowed only to loopback
  s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o",
      Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")}})
  for s.Next() { if ch := s.Current(); len(ch.Choices) > 0 { fmt.Print(ch.Choices[0].Delta.Content) } }

Press Ctrl-C to stop.
`, base, config.DefaultAPIVersion)
}
