package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/tokengate/tokengate/internal/loadtest"
)

const loadtestHelp = `Usage: tokengate loadtest --url BASE (--rate R | --concurrency N) [flags]

Sends chat completions to any Azure OpenAI- or OpenAI-compatible endpoint (the
gateway, the simulator, a real Azure OpenAI resource) and reports throughput,
latency percentiles, time to first token, tokens per second and errors.

  --rate R            open loop: R arrivals per second whatever the server does;
                      latency counts from each request's intended send time
  --concurrency N     closed loop: N workers sending back to back; with --rate,
                      the most requests in flight (later arrivals queue)

Mix file (--mix FILE, YAML; flags given explicitly override it):

  stream_share: 0.3
  max_tokens: 128
  prompt_tokens: [{tokens: 50, weight: 3}, {tokens: 2000, weight: 1}]
  models: [{alias: gpt-4o, weight: 3}, {alias: gpt-4o-mini, weight: 1}]
  apps:      # each app sends its own headers; ${ENV} is expanded
    - {name: chat-app, weight: 1, headers: {Authorization: "Bearer ${CHAT_TOKEN}"}}

--json prints the report as JSON on stdout (fields: report_version, mode, url,
sent, completed, succeeded, errors, achieved_rate, latency_ms, latency_json_ms,
latency_stream_ms, ttft_ms, schedule_lag_ms, prompt_tokens, completion_tokens,
completion_tokens_per_s, status_codes, throttled, transport_errors,
incomplete_streams, by_app, by_model, ...; see "go doc ./internal/loadtest").
Header values are never printed. Exit status: 0 when the run completed, even
with HTTP errors; 1 when no request got a response; 2 for bad flags.

Flags:
`

// runLoadtest runs "tokengate loadtest": the load generator of
// internal/loadtest with its report on stdout.
func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("loadtest", stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), loadtestHelp)
		fs.PrintDefaults()
	}
	var cfg loadtest.Config
	fs.StringVar(&cfg.URL, "url", "", "base URL of the endpoint, e.g. http://127.0.0.1:8080 (required)")
	var headerErr error
	fs.Func("header", "`Name: value` sent with every request (repeatable), e.g. 'Authorization: Bearer TOKEN' or 'api-key: KEY'", func(s string) error {
		h, err := loadtest.ParseHeader(s)
		if err != nil {
			// Reported as a usage error below; the value is never echoed.
			headerErr = errors.Join(headerErr, fmt.Errorf("--header #%d: %w", len(cfg.Header)+1, err))
			cfg.Header = append(cfg.Header, loadtest.Header{})
			return nil
		}
		cfg.Header = append(cfg.Header, h)
		return nil
	})
	model := fs.String("model", loadtest.DefaultModel, "model alias: the Azure deployment name, or \"model\" of the v1 API")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: requests per second")
	fs.IntVar(&cfg.Concurrency, "concurrency", 0, "closed loop: workers; with --rate: the most requests in flight")
	fs.DurationVar(&cfg.Duration, "duration", loadtest.DefaultDuration, "measured duration")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "unmeasured time before --duration")
	fs.DurationVar(&cfg.Ramp, "ramp", 0, "closed loop: spread the workers' start over this time")
	fs.Float64Var(&cfg.StreamShare, "stream-share", 0, "fraction of requests with \"stream\": true, 0 to 1")
	promptTokens := fs.Int("prompt-tokens", loadtest.DefaultPromptTokens, "approximate prompt size in tokens")
	fs.IntVar(&cfg.MaxTokens, "max-tokens", loadtest.DefaultMaxTokens, "max_tokens of each request")
	fs.StringVar(&cfg.API, "api", "azure", "azure: /openai/deployments/{model}/chat/completions; v1: /v1/chat/completions")
	fs.StringVar(&cfg.APIVersion, "api-version", loadtest.DefaultAPIVersion, "api-version of the azure API")
	fs.DurationVar(&cfg.Timeout, "timeout", loadtest.DefaultTimeout, "per request, to the end of the body or stream")
	mixPath := fs.String("mix", "", "YAML request mix (see above)")
	asJSON := fs.Bool("json", false, "print the report as JSON on stdout, nothing else")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if headerErr != nil {
		return usageError("%v", headerErr)
	}
	if cfg.Duration <= 0 {
		return usageError("--duration: must be positive, got %s", cfg.Duration)
	}
	if cfg.Timeout <= 0 {
		return usageError("--timeout: must be positive, got %s", cfg.Timeout)
	}
	if *promptTokens < 1 {
		return usageError("--prompt-tokens: must be positive, got %d", *promptTokens)
	}
	if cfg.MaxTokens < 1 {
		return usageError("--max-tokens: must be positive, got %d", cfg.MaxTokens)
	}
	cfg.Models = []loadtest.ModelShare{{Alias: *model}}
	cfg.PromptTokens = []loadtest.PromptShare{{Tokens: *promptTokens}}
	if *mixPath != "" {
		mix, err := loadtest.LoadMix(*mixPath)
		if err != nil {
			return usageError("--mix: %v", err)
		}
		explicit := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
		mix.Apply(&cfg, func(name string) bool { return explicit[name] })
	}
	if err := cfg.Validate(); err != nil {
		return usageError("%s", strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	if f, ok := stderr.(*os.File); ok && !*asJSON && term.IsTerminal(int(f.Fd())) {
		cfg.Progress = stderr
	}

	rep, runErr := loadtest.Run(ctx, cfg)
	if rep == nil {
		return runErr
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := rep.WriteText(stdout); err != nil {
		return err
	}
	return runErr
}
