package ratelimit

import (
	"context"
	"testing"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/testenv"
)

// benchConfig is a typical app: app rpm and tpm, a per-user rpm, a daily
// quota and its team's tpm; limits high enough never to refuse.
func benchConfig() (*config.Config, Subject) {
	cfg := limitsConfig([]config.Limit{{RPM: 1 << 40, TPM: 1 << 50}, {Per: "user", RPM: 1 << 40}, {TokensPerDay: 1 << 60}})
	cfg.Apps[0].Team = "t"
	cfg.Teams = []config.Team{{Name: "t", Limits: []config.Limit{{TPM: 1 << 50}}}}
	return cfg, Subject{App: &cfg.Apps[0], User: "6f1c2a9e-3d4b-4c5d-8e6f-7a8b9c0d1e2f", Model: "gpt-4o"}
}

func benchAdmit(b *testing.B, cfg *config.Config, s Subject, parallel bool) {
	l, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close(context.Background())
	ctx := context.Background()
	step := func() {
		res, err := l.Admit(ctx, s, 1500)
		if err != nil {
			b.Fatal(err)
		}
		res.Settle(ctx, 1200, 0.01)
	}
	b.ReportAllocs()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				step()
			}
		})
		return
	}
	for b.Loop() {
		step()
	}
}

// BenchmarkAdmitMemory is one Admit and its Settle against five limits in
// the memory store.
func BenchmarkAdmitMemory(b *testing.B) {
	cfg, s := benchConfig()
	b.Run("serial", func(b *testing.B) { benchAdmit(b, cfg, s, false) })
	b.Run("parallel", func(b *testing.B) { benchAdmit(b, cfg, s, true) })
}

// BenchmarkAdmitRedis is the same against a local redis-server: ns/op is
// the latency Redis adds to a request (two round trips: the admission and
// the settlement script), to compare with ping's one.
func BenchmarkAdmitRedis(b *testing.B) {
	addr := testenv.Redis(b).Addr()
	// The floor: one PING round trip to the same server.
	b.Run("ping", func(b *testing.B) {
		cfg, _ := benchConfig()
		useRedis(cfg, addr)
		l, err := New(cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close(context.Background())
		b.ReportAllocs()
		for b.Loop() {
			if err := l.redis.client.Ping(context.Background()).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("serial", func(b *testing.B) {
		cfg, s := benchConfig()
		useRedis(cfg, addr)
		benchAdmit(b, cfg, s, false)
	})
	b.Run("parallel", func(b *testing.B) {
		cfg, s := benchConfig()
		useRedis(cfg, addr)
		benchAdmit(b, cfg, s, true)
	})
}

// BenchmarkEachDecision is the metrics hook's walk over the decisions of
// a typical app's request (five limits).
func BenchmarkEachDecision(b *testing.B) {
	cfg, s := benchConfig()
	l, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close(context.Background())
	res, err := l.Admit(context.Background(), s, 1500)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	count := func(string, bool) { n++ }
	b.ReportAllocs()
	for b.Loop() {
		res.EachDecision(count)
	}
	if n == 0 {
		b.Fatal("no decisions")
	}
}
