package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/tokengate/tokengate/internal/simulator"
)

const (
	kafkaUser     = "$ConnectionString"
	kafkaPassword = "Endpoint=sb://test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0"
	kafkaTopic    = "usage"
)

// startKafka runs a Kafka-protocol cluster with SASL PLAIN on port, its
// data in dir (so a restart keeps the topic and its records, as a real
// broker does).
func startKafka(t *testing.T, port int, dir string) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.EnableSASL(), kfake.DataDir(dir),
		kfake.Superuser("PLAIN", kafkaUser, kafkaPassword), kfake.SeedTopics(1, kafkaTopic))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// kafkaKeys reads the topic and counts its records by key: all of them
// (until three polls in a row bring nothing), or, with any, only until the
// first records arrive.
func kafkaKeys(t *testing.T, c *kfake.Cluster, any bool) map[string]int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(kafkaTopic),
		kgo.SASL(plain.Auth{User: kafkaUser, Pass: kafkaPassword}.AsMechanism()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	keys := map[string]int{}
	total := 0
	for idle, deadline := 0, time.Now().Add(30*time.Second); idle < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("kafka: still reading after 30 s (%d records, %d keys): %v", total, len(keys), cl.PollFetches(context.Background()).Errors())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { keys[string(r.Key)]++; n++ })
		total += n
		if n == 0 {
			idle++
		} else if any {
			break
		}
	}
	return keys
}

func freePort(t *testing.T) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

// seenIDs collects the request ids clients saw, safely across goroutines.
type seenIDs struct {
	mu  sync.Mutex
	ids map[string]time.Time // id -> when the client finished with it
}

func (s *seenIDs) add(id string) {
	if id == "" {
		return
	}
	s.mu.Lock()
	s.ids[id] = time.Now()
	s.mu.Unlock()
}

// mixedLoad runs workers until stop: non-streaming calls, streams, streams
// with include_usage and clients that hang up mid-stream.
func mixedLoad(base string, workers int, stop <-chan struct{}, seen *seenIDs) *sync.WaitGroup {
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				kind := (w + i) % 4
				body := `{"model":"gpt-4o","messages":[{"role":"user","content":"request ` + strconv.Itoa(i) + `"}]`
				switch kind {
				case 1, 2:
					body += `,"stream":true`
				case 3:
					body += `,"stream":true,"stream_options":{"include_usage":true}`
				}
				body += "}"
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					cancel()
					time.Sleep(20 * time.Millisecond) // the gateway is restarting
					continue
				}
				id := resp.Header.Get("X-Request-Id")
				if kind == 2 { // hang up after a few events
					br := bufio.NewReader(resp.Body)
					for range 4 {
						if _, err := br.ReadString('\n'); err != nil {
							break
						}
					}
				} else {
					_, _ = io.Copy(io.Discard, resp.Body)
				}
				cancel()
				resp.Body.Close()
				seen.add(id)
			}
		}()
	}
	return &wg
}

// startAt runs `tokengate serve` on addr and waits until it is ready.
func startAt(t *testing.T, cfgPath, addr string) *process {
	t.Helper()
	p := start(t, "serve", "--config", cfgPath, "--addr", addr, "--admin-addr", "off")
	waitReady(t, "http://"+addr, p)
	return p
}

// TestUsageReconciliation: mixed load (streams and not, clients hanging up,
// backend resets), a Kafka sink that is down for part of the run, a gateway
// restart in the middle. Afterwards every request id a client saw is in
// every sink exactly once after dedup, and no record of a request that
// generated tokens says 0.
func TestUsageReconciliation(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	port, kdir := freePort(t), t.TempDir()
	k1 := startKafka(t, port, kdir)
	obs := newObservations()
	ug := newUsageGateway(t, obs, simulator.InstanceConfig{
		Latency:          simulator.Latency{TokensPerSecond: 500},
		Faults:           simulator.Faults{ResetRate: 0.05},
		CompletionTokens: 12,
	}, fmt.Sprintf(`    - {type: kafka, brokers: ["127.0.0.1:%d"], topic: %s, timeout: 1s, sasl: {mechanism: plain, username: %q, password: %q}}
`, port, kafkaTopic, kafkaUser, kafkaPassword))
	cfgPath := filepath.Join(ug.dir, "tokengate.yaml")
	writeFile(t, cfgPath, strings.Replace(ug.config, "drain_timeout: 20s", "drain_timeout: 3s", 1))
	addr := freeAddr(t)
	base := "http://" + addr

	p1 := startAt(t, cfgPath, addr)
	seen := &seenIDs{ids: map[string]time.Time{}}
	stop := make(chan struct{})
	wg := mixedLoad(base, 6, stop, seen)

	time.Sleep(1500 * time.Millisecond)
	if len(kafkaKeys(t, k1, true)) == 0 {
		t.Fatal("nothing reached Kafka while it was up")
	}
	k1.Close() // the Kafka sink is down from here

	time.Sleep(time.Second)
	// Restart the gateway while Kafka is down: its drain cannot finish, so
	// it must exit non-zero and keep the records spooled.
	_ = p1.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p1.done:
		if err == nil {
			t.Errorf("gateway exited 0 although the Kafka sink could not drain")
		}
		p1.done <- err // let Cleanup's stop see it finished
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not exit after SIGTERM")
	}
	if !strings.Contains(p1.stderr.String(), "kept in the spool") {
		t.Errorf("shutdown did not say records were kept in the spool:\n%s", p1.stderr.String())
	}
	p2 := startAt(t, cfgPath, addr)

	time.Sleep(time.Second)
	k2 := startKafka(t, port, kdir) // the sink is back: it catches up
	defer k2.Close()
	time.Sleep(6 * time.Second) // franz-go rediscovers a returning broker within ~5 s
	close(stop)
	wg.Wait()
	p2.stop(t) // drains everything (Kafka is up): exit 0

	kafkaGot := kafkaKeys(t, k2, false)
	sqliteGot := ug.sqliteIDs(t)
	recs := byID(ug.records(t))
	seen.mu.Lock()
	defer seen.mu.Unlock()
	if len(seen.ids) < 100 {
		t.Fatalf("only %d requests completed; the load did not run", len(seen.ids))
	}
	for id := range seen.ids {
		if sqliteGot[id] != 1 || kafkaGot[id] == 0 {
			t.Errorf("request %s: %d rows in sqlite, %d records in kafka", id, sqliteGot[id], kafkaGot[id])
		}
		if _, ok := recs[id]; !ok {
			t.Errorf("request %s: not in the file sink", id)
		}
	}
	if len(sqliteGot) != len(kafkaGot) || len(recs) != len(sqliteGot) {
		t.Errorf("sinks disagree after dedup: sqlite %d, kafka %d, file %d", len(sqliteGot), len(kafkaGot), len(recs))
	}
	dups := 0
	for _, n := range kafkaGot {
		dups += n - 1
	}
	var generated, estimated, disconnected, resets int
	for _, ob := range obs.settle() {
		if ob.CompletionTokens == 0 {
			continue
		}
		generated++
		r, ok := recs[ob.Header.Get("X-Ms-Client-Request-Id")]
		if !ok {
			continue // a request whose client never saw an id (refused during the restart)
		}
		if r.Tokens.Completion == 0 || r.Tokens.Prompt == 0 {
			t.Errorf("request %s generated %d tokens but its record says %+v (%s)", r.RequestID, ob.CompletionTokens, r.Tokens, r.ErrorClass)
		}
		if r.Tokens.Source == "estimated" {
			estimated++
		}
		if r.ErrorClass == "client_disconnected" {
			disconnected++
		}
		if ob.Reset {
			resets++
		}
	}
	t.Logf("%d requests seen by clients, %d generated tokens (%d backend resets, %d client hang-ups, %d estimated); kafka redelivered %d duplicates",
		len(seen.ids), generated, resets, disconnected, estimated, dups)
	if resets == 0 || disconnected == 0 {
		t.Errorf("the load did not exercise resets (%d) and hang-ups (%d)", resets, disconnected)
	}
}

// TestUsageCrash kills the gateway with SIGKILL under load: what is lost is
// at most what finished within the spool's fsync window before the kill.
func TestUsageCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	const window = 200 * time.Millisecond
	ug := newUsageGateway(t, nil, simulator.InstanceConfig{CompletionTokens: 8}, "")
	cfgPath := filepath.Join(ug.dir, "tokengate.yaml")
	writeFile(t, cfgPath, strings.Replace(ug.config, "sync_interval: 100ms", "sync_interval: 200ms", 1))
	addr := freeAddr(t)
	p1 := startAt(t, cfgPath, addr)
	seen := &seenIDs{ids: map[string]time.Time{}}
	stop := make(chan struct{})
	wg := mixedLoad("http://"+addr, 8, stop, seen)
	time.Sleep(2 * time.Second)
	killed := time.Now()
	_ = p1.cmd.Process.Kill()
	<-p1.done
	p1.done <- nil
	close(stop)
	wg.Wait()

	p2 := startAt(t, cfgPath, addr) // recovers the spool, delivers the rest
	p2.stop(t)
	got := ug.sqliteIDs(t)
	lost := 0
	seen.mu.Lock()
	defer seen.mu.Unlock()
	for id, at := range seen.ids {
		if got[id] == 1 {
			continue
		}
		lost++
		if at.Before(killed.Add(-window - 250*time.Millisecond)) {
			t.Errorf("request %s finished %v before the kill and was lost", id, killed.Sub(at))
		}
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("request %s is in sqlite %d times", id, n)
		}
	}
	t.Logf("kill -9 after %d answered requests: %d lost, all within the %v fsync window", len(seen.ids), lost, window)
}
