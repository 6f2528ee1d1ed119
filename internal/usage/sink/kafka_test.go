package sink

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/testenv"
	"github.com/tokengate/tokengate/internal/usage"
)

const (
	testTopic    = "usage"
	testUser     = "tokengate"
	testPassword = "pa55-w0rd-that-must-never-leak"
)

// newCluster starts a kfake cluster with SASL PLAIN users and the usage
// topic (3 partitions).
func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	all := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.SeedTopics(3, testTopic),
		kfake.EnableSASL(),
		kfake.Superuser("PLAIN", testUser, testPassword),
	}
	c, err := kfake.NewCluster(append(all, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// kafkaConfig is a kafka sink config for a cluster.
func kafkaConfig(c *kfake.Cluster, password string, timeout time.Duration) config.Sink {
	return config.Sink{
		Name:    "kafka",
		Type:    config.SinkKafka,
		Brokers: c.ListenAddrs(),
		Topic:   testTopic,
		SASL:    config.SASL{Mechanism: "plain", Username: testUser, Password: password},
		Timeout: timeout,
	}
}

func newKafkaSink(t testing.TB, cfg config.Sink, log *slog.Logger, opts ...kgo.Opt) *Kafka {
	t.Helper()
	k, err := NewKafka(cfg, log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

// consume reads n records from the topic with a consumer group, then checks
// that no more arrive.
func consume(t *testing.T, brokers []string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(testTopic),
		kgo.ConsumerGroup("usage-readers"),
		kgo.FetchMaxWait(200 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records before the deadline", len(out), n)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Fatalf("fetch %s/%d: %v", topic, p, err) })
		out = append(out, fs.Records()...)
	}
	tail, cancelTail := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancelTail()
	if extra := cl.PollFetches(tail).Records(); len(extra) > 0 {
		t.Errorf("%d records more than the %d written", len(extra), n)
	}
	return out
}

// checkRecords asserts that got holds exactly want, keyed by request id,
// with the record's JSON as value and the schema header.
func checkRecords(t *testing.T, got []*kgo.Record, want []usage.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d messages, want %d", len(got), len(want))
	}
	byKey := map[string]*kgo.Record{}
	for _, m := range got {
		if byKey[string(m.Key)] != nil {
			t.Errorf("key %s twice", m.Key)
		}
		byKey[string(m.Key)] = m
	}
	for i := range want {
		m := byKey[want[i].RequestID]
		if m == nil {
			t.Errorf("no message keyed %s", want[i].RequestID)
			continue
		}
		if !bytes.Equal(m.Value, mustJSON(t, &want[i])) {
			t.Errorf("%s: value\n%s\nwant\n%s", m.Key, m.Value, mustJSON(t, &want[i]))
		}
		if len(m.Headers) != 1 || m.Headers[0].Key != "schema" || string(m.Headers[0].Value) != "1" {
			t.Errorf("%s: headers %v, want schema=1", m.Key, m.Headers)
		}
	}
}

func saslOpt(user, pass string) kgo.Opt {
	return kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism())
}

func TestKafkaWriteAndConsume(t *testing.T) {
	c := newCluster(t)
	k := newKafkaSink(t, kafkaConfig(c, testPassword, 5*time.Second), nil)
	if k.Name() != "kafka" {
		t.Errorf("Name() = %q", k.Name())
	}
	var all []usage.Record
	for _, size := range []int{10, 1, 250, 0} {
		batch := testRecords(len(all), size)
		if err := k.Write(context.Background(), batch); err != nil {
			t.Fatalf("Write(%d records): %v", size, err)
		}
		all = append(all, batch...)
	}
	// A record of an older schema carries its own version.
	old := testRecord(len(all))
	old.Schema = 0
	if err := k.Write(context.Background(), []usage.Record{old}); err != nil {
		t.Fatal(err)
	}

	got := consume(t, c.ListenAddrs(), len(all)+1, saslOpt(testUser, testPassword))
	var rest []*kgo.Record
	for _, m := range got {
		if string(m.Key) == old.RequestID {
			if len(m.Headers) != 1 || string(m.Headers[0].Value) != "0" {
				t.Errorf("schema 0 record: headers %v", m.Headers)
			}
			continue
		}
		rest = append(rest, m)
	}
	checkRecords(t, rest, all)

	// One request id always lands on the same partition: what compaction
	// and per-key consumers rely on.
	if err := k.Write(context.Background(), all[:20]); err != nil {
		t.Fatal(err)
	}
	part := map[string]int32{}
	for _, m := range got {
		part[string(m.Key)] = m.Partition
	}
	again := consume(t, c.ListenAddrs(), 20, saslOpt(testUser, testPassword))
	for _, m := range again {
		if part[string(m.Key)] != m.Partition {
			t.Errorf("%s went to partition %d, then %d", m.Key, part[string(m.Key)], m.Partition)
		}
	}
}

func TestKafkaWrongPasswordFailsWithinTimeout(t *testing.T) {
	c := newCluster(t)
	const timeout = time.Second
	logs := &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	const wrong = "wrong-" + testPassword
	k := newKafkaSink(t, kafkaConfig(c, wrong, timeout), log)

	start := time.Now()
	err := k.Write(context.Background(), testRecords(0, 5))
	took := time.Since(start)
	if err == nil {
		t.Fatal("Write with a wrong password succeeded")
	}
	t.Logf("error after %v: %v", took.Round(time.Millisecond), err)
	if took > timeout+time.Second {
		t.Errorf("Write took %v, timeout %v", took, timeout)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, kgo.ErrRecordTimeout) {
		t.Errorf("error %v is neither a deadline nor a record timeout", err)
	}
	// kfake drops the connection on a bad password (a real broker answers
	// SASL_AUTHENTICATION_FAILED); either way the error carries it.
	if !strings.Contains(err.Error(), "last broker connection error") {
		t.Errorf("error does not say why the broker could not be used: %v", err)
	}
	for _, text := range []string{err.Error(), logs.String()} {
		if strings.Contains(text, testPassword) {
			t.Errorf("password leaked: %s", text)
		}
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestKafkaBrokerDownThenBack(t *testing.T) {
	// The restarted broker reloads the topic from disk, as a real one does:
	// a topic recreated under a new id is another matter.
	port, dir := freePort(t), t.TempDir()
	c := newCluster(t, kfake.Ports(port), kfake.DataDir(dir))
	const timeout = time.Second
	// franz-go refreshes metadata at most every 5 s (so a sink notices a
	// returning broker within about that) and backs off between attempts:
	// keep the test short.
	k := newKafkaSink(t, kafkaConfig(c, testPassword, timeout), nil,
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }))
	if err := k.Write(context.Background(), testRecords(0, 10)); err != nil {
		t.Fatal(err)
	}

	c.Close()
	start := time.Now()
	err := k.Write(context.Background(), testRecords(10, 10))
	took := time.Since(start)
	if err == nil {
		t.Fatal("Write to a closed cluster succeeded")
	}
	t.Logf("broker down: error after %v: %v", took.Round(time.Millisecond), err)
	if took > timeout+time.Second {
		t.Errorf("Write took %v, timeout %v", took, timeout)
	}

	// The broker comes back on the same address; the sink delivers again
	// without being rebuilt. As the spool would, retry the batch until it
	// is accepted.
	c2 := newCluster(t, kfake.Ports(port), kfake.DataDir(dir))
	batch := testRecords(10, 10)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err = k.Write(context.Background(), batch)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delivery after the broker came back: %v", err)
		}
	}
	got := consume(t, c2.ListenAddrs(), 20, saslOpt(testUser, testPassword))
	checkRecords(t, got, testRecords(0, 20))
}

func TestKafkaOversizedRecordIsTrimmed(t *testing.T) {
	c := newCluster(t)
	logs := &testenv.Buffer{}
	k := newKafkaSink(t, kafkaConfig(c, testPassword, 5*time.Second), slog.New(slog.NewTextHandler(logs, nil)))
	big := testRecord(0)
	big.Capture = &usage.Capture{
		Mode:            usage.CaptureFull,
		Prompt:          strings.Repeat("é<", 150_000), // 450 KB raw, 1.2 MB as JSON
		Completion:      strings.Repeat("ok ", 1000),
		PromptBytes:     450_000,
		CompletionBytes: 3000,
	}
	small := testRecord(1)
	if err := k.Write(context.Background(), []usage.Record{big, small}); err != nil {
		t.Fatal(err)
	}
	got := consume(t, c.ListenAddrs(), 2, saslOpt(testUser, testPassword))
	for _, m := range got {
		if string(m.Key) != big.RequestID {
			continue
		}
		if len(m.Value) > maxValueBytes {
			t.Errorf("value of %d bytes, limit %d", len(m.Value), maxValueBytes)
		}
		if !bytes.Contains(m.Value, []byte(truncatedMark)) || !bytes.Contains(m.Value, []byte(`"prompt_bytes":450000`)) {
			t.Errorf("trimmed record lacks the mark or the original size")
		}
		if !bytes.Contains(m.Value, []byte(`"completion":"ok ok`)) {
			t.Errorf("the short completion was cut too")
		}
	}
	if !strings.Contains(logs.String(), big.RequestID) {
		t.Errorf("trimming was not logged: %s", logs.String())
	}
	if big.Capture.Prompt[len(big.Capture.Prompt)-1] != '<' {
		t.Error("Write modified the caller's record")
	}
}

func TestTrimCapture(t *testing.T) {
	for _, tc := range []struct {
		name               string
		prompt, completion string
		over               int
		ok                 bool
	}{
		{"prompt cut", strings.Repeat("a", 100), "b", 10, true},
		{"both cut", strings.Repeat("a", 30), strings.Repeat("b", 30), 30, true},
		{"escaped text", strings.Repeat("<>", 100), "", 500, true},
		{"multibyte runes stay whole", strings.Repeat("é", 50), "", 7, true},
		{"not enough text", "abc", "def", 10, false},
		{"no capture", "", "", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRecord(0)
			if tc.prompt != "" || tc.completion != "" {
				r.Capture = &usage.Capture{Mode: usage.CaptureFull, Prompt: tc.prompt, Completion: tc.completion}
			}
			before := len(mustJSON(t, &r))
			cut, ok := trimCapture(&r, tc.over)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			after := len(mustJSON(t, cut))
			if before-after < tc.over {
				t.Errorf("shrank by %d bytes, want at least %d", before-after, tc.over)
			}
			for _, s := range []string{cut.Capture.Prompt, cut.Capture.Completion} {
				if !strings.ContainsRune(s, '\uFFFD') && strings.ToValidUTF8(s, "\uFFFD") != s {
					t.Errorf("invalid UTF-8 after cut: %q", s)
				}
			}
			if r.Capture.Prompt != tc.prompt {
				t.Error("trimCapture modified its input")
			}
		})
	}
}

func TestCutToJSON(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		budget   int
		want     string
	}{
		{"ascii", "abcdefgh", jsonLen("abcd" + truncatedMark), "abcd"},
		{"escapes count", "<<<<", jsonLen(truncatedMark) + 12, "<<"},
		{"4-byte runes stay whole", "😀😀😀", jsonLen(truncatedMark) + 7, "😀"},
		{"room for nothing", "abc", jsonLen(truncatedMark), ""},
		{"room for everything", "abc", 100, "abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cutToJSON(tc.in, tc.budget); got != tc.want+truncatedMark {
				t.Errorf("cutToJSON(%q, %d) = %q, want %q", tc.in, tc.budget, got, tc.want+truncatedMark)
			}
		})
	}
}

func TestKafkaWriteHonorsCallerContext(t *testing.T) {
	c := newCluster(t)
	k := newKafkaSink(t, kafkaConfig(c, testPassword, 10*time.Second), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := k.Write(ctx, testRecords(0, 3)); err == nil {
		t.Error("Write with a canceled context succeeded")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("canceled Write took %v", took)
	}
}

func TestKafkaCloseWithinContext(t *testing.T) {
	c := newCluster(t)
	k, err := NewKafka(kafkaConfig(c, testPassword, time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Write(context.Background(), testRecords(0, 1)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Write(context.Background(), testRecords(1, 1)); err == nil {
		t.Error("Write after Close succeeded")
	}
}

func TestKafkaOptions(t *testing.T) {
	base := config.Sink{Name: "k", Type: config.SinkKafka, Brokers: []string{"b1:9092", "b2:9092"}, Topic: "usage", Timeout: 7 * time.Second}
	t.Run("plain", func(t *testing.T) {
		k := newKafkaSink(t, base, nil)
		checkOpt(t, k, kgo.SeedBrokers, []string{"b1:9092", "b2:9092"})
		checkOpt(t, k, kgo.RequiredAcks, kgo.AllISRAcks())
		checkOpt(t, k, kgo.RecordDeliveryTimeout, 7*time.Second)
		checkOpt(t, k, kgo.ProduceRequestTimeout, 7*time.Second)
		checkOpt(t, k, kgo.DialTimeout, 7*time.Second)
		checkOpt(t, k, kgo.AllowIdempotentProduceCancellation, true)
		checkOpt(t, k, kgo.DisableIdempotentWrite, false)
		checkOpt(t, k, kgo.ProducerBatchMaxBytes, int32(maxRequestBytes))
		if tc := k.client.OptValue(kgo.DialTLSConfig); tc.(*tls.Config) != nil {
			t.Errorf("TLS on without tls: true")
		}
		if m := k.client.OptValue(kgo.SASL); len(m.([]sasl.Mechanism)) != 0 {
			t.Errorf("SASL on without sasl")
		}
	})
	t.Run("tls and sasl", func(t *testing.T) {
		cfg := base
		cfg.TLS = true
		cfg.SASL = config.SASL{Mechanism: "PLAIN", Username: "svc", Password: "pw"}
		k := newKafkaSink(t, cfg, nil)
		tc := k.client.OptValue(kgo.DialTLSConfig).(*tls.Config)
		if tc == nil || tc.MinVersion != tls.VersionTLS12 || tc.RootCAs != nil || tc.InsecureSkipVerify {
			t.Errorf("TLS config %+v, want TLS 1.2+ against the system roots", tc)
		}
		checkPlain(t, k, "svc", "pw")
	})
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			edit func(*config.Sink)
		}{
			{"no brokers", func(c *config.Sink) { c.Brokers = nil }},
			{"no topic", func(c *config.Sink) { c.Topic = "" }},
			{"no timeout", func(c *config.Sink) { c.Timeout = 0 }},
			{"scram", func(c *config.Sink) { c.SASL = config.SASL{Mechanism: "scram-sha-256", Username: "u"} }},
			{"plain without user", func(c *config.Sink) { c.SASL = config.SASL{Mechanism: "plain", Password: "pw"} }},
			{"wrong type", func(c *config.Sink) { c.Type = config.SinkFile }},
		} {
			cfg := base
			tc.edit(&cfg)
			if _, err := NewKafka(cfg, nil); err == nil {
				t.Errorf("%s: NewKafka succeeded", tc.name)
			}
		}
	})
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		cfg  config.Sink
		want string // type name of the sink, "" for an error
	}{
		{config.Sink{Name: "out", Type: config.SinkStdout}, "*sink.Stdout"},
		{config.Sink{Name: "f", Type: config.SinkFile, Path: dir + "/u.jsonl", MaxBytes: 1 << 20, MaxFiles: 2}, "*sink.File"},
		{config.Sink{Name: "k", Type: config.SinkKafka, Brokers: []string{"127.0.0.1:1"}, Topic: "t", Timeout: time.Second}, "*sink.Kafka"},
		{config.Sink{Name: "eh", Type: config.SinkEventHubs, ConnectionString: testConnString, Topic: "usage", Timeout: time.Second}, "*sink.Kafka"},
		{config.Sink{Name: "db", Type: config.SinkSQLite, Path: dir + "/u.db"}, ""},
		{config.Sink{Name: "pg", Type: config.SinkPostgres, DSN: "postgres://x"}, ""},
		{config.Sink{Name: "x", Type: "carrier-pigeon"}, ""},
	} {
		s, err := New(tc.cfg, nil)
		if tc.want == "" {
			if err == nil {
				t.Errorf("New(%s) succeeded", tc.cfg.Type)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%s): %v", tc.cfg.Type, err)
			continue
		}
		if got := fmt.Sprintf("%T", s); got != tc.want || s.Name() != tc.cfg.Name {
			t.Errorf("New(%s) = %s named %q", tc.cfg.Type, got, s.Name())
		}
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close(%s): %v", tc.cfg.Type, err)
		}
	}
}

// BenchmarkKafkaRecords is the sink's own work per batch: encoding and
// building the messages, without the network.
func BenchmarkKafkaRecords(b *testing.B) {
	k := &Kafka{topic: testTopic, log: slog.New(slog.DiscardHandler)}
	batch := testRecords(0, 500)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.records(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkKafkaWrite(b *testing.B) {
	c := newCluster(b)
	cfg := config.Sink{
		Name: "kafka", Type: config.SinkKafka, Brokers: c.ListenAddrs(), Topic: testTopic, Timeout: 10 * time.Second,
		SASL: config.SASL{Mechanism: "plain", Username: testUser, Password: testPassword},
	}
	k := newKafkaSink(b, cfg, nil)
	batch := testRecords(0, 500) // config's default batch_size
	if err := k.Write(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := k.Write(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "records/s")
}

// slogTo logs everything, as text, to w.
func slogTo(w *testenv.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
