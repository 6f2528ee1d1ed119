package sink

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/usage"
)

var _ usage.Sink = (*Kafka)(nil)

const (
	// maxRequestBytes bounds a produce request and a record batch. Kafka's
	// default message.max.bytes is 1,048,588, and Event Hubs closes the
	// connection on a request over 1,046,528 bytes (Microsoft recommends
	// max.request.size 1000000).
	maxRequestBytes = 1_000_000
	// maxValueBytes is the largest record value the sink sends: a batch of
	// one such record, with its key, header and framing, fits maxRequestBytes.
	maxValueBytes = maxRequestBytes - 4<<10
	// truncatedMark ends captured text that was cut to fit maxValueBytes.
	truncatedMark = "[TRUNCATED]"
)

// schemaHeaders is the header of a record of the current schema, shared
// (read-only) by every record to spare an allocation per record.
var schemaHeaders = []kgo.RecordHeader{{Key: "schema", Value: []byte(strconv.Itoa(usage.SchemaVersion))}}

// Kafka produces records to a Kafka topic or an Event Hubs event hub: one
// message per record, key = request_id (consumers dedup on it; compaction
// keeps one copy), value = the record's JSON, header "schema" = the record's
// schema version.
//
// Write returns nil only when every record of the batch was acknowledged by
// all in-sync replicas. It returns an error within the sink's timeout when a
// broker is down, unreachable, refuses the credentials or is too slow; the
// records may still have been written (at least once: a retry can duplicate).
//
// A record whose JSON would exceed maxValueBytes (about 1 MB, the largest
// message Kafka and Event Hubs take by default) has its captured prompt and
// completion cut to fit and ended with "[TRUNCATED]", and the cut is logged:
// a record the broker can never accept would otherwise stall the sink.
//
// Safe for concurrent use.
type Kafka struct {
	name    string
	kind    string // config.SinkKafka or config.SinkEventHubs, for errors
	topic   string
	timeout time.Duration
	client  *kgo.Client
	log     *slog.Logger
	secrets []string // never to appear in an error or log line
	conn    *connWatch
}

// NewKafka builds the sink for cfg.Type "kafka" (cfg.Brokers, cfg.TLS,
// cfg.SASL) or "eventhubs" (cfg.ConnectionString; see docs/event-hubs.md
// for what the Event Hubs endpoint needs and how the client is set up for
// it). cfg.Topic is the topic or event hub, cfg.Timeout bounds one Write.
// It does not connect: a broker that is down at start makes Writes fail
// until it is back. opts are applied last and override the sink's own
// (tests use them to point at a fake cluster).
func NewKafka(cfg config.Sink, log *slog.Logger, opts ...kgo.Opt) (*Kafka, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		return nil, fmt.Errorf("%s sink %q: timeout must be positive", cfg.Type, cfg.Name)
	}
	conn, err := connectionFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s sink %q: %w", cfg.Type, cfg.Name, err)
	}
	k := &Kafka{
		name:    cfg.Name,
		kind:    cfg.Type,
		topic:   conn.topic,
		timeout: cfg.Timeout,
		log:     log.With(slog.String("sink", cfg.Name)),
		secrets: conn.secrets,
		conn:    &connWatch{},
	}
	if cfg.Type == config.SinkKafka && cfg.SASL.Mechanism != "" && !cfg.TLS {
		k.log.Warn("kafka sink sends its SASL PLAIN password in clear text: set tls: true unless the network is trusted")
	}
	all := []kgo.Opt{
		kgo.SeedBrokers(conn.brokers...),
		kgo.ClientID("tokengate"),
		kgo.DefaultProduceTopic(conn.topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// A Write gives up after cfg.Timeout (its context); these make the
		// client give up on the records at the same time instead of
		// retrying them in the background, and bound a dial.
		kgo.RecordDeliveryTimeout(cfg.Timeout),
		kgo.ProduceRequestTimeout(cfg.Timeout),
		kgo.DialTimeout(min(cfg.Timeout, 10*time.Second)),
		kgo.ProducerBatchMaxBytes(maxRequestBytes),
		kgo.WithLogger(kgoLogger{log: k.log, secrets: k.secrets}),
		kgo.WithHooks(k.conn),
	}
	all = append(all, conn.opts...)
	all = append(all, opts...)
	client, err := kgo.NewClient(all...)
	if err != nil {
		return nil, fmt.Errorf("%s sink %q: %s", cfg.Type, cfg.Name, redacted(err.Error(), k.secrets...))
	}
	k.client = client
	return k, nil
}

// connection is how a Kafka sink reaches its topic.
type connection struct {
	brokers []string
	topic   string
	opts    []kgo.Opt // type-specific client options
	secrets []string
}

// connectionFor derives the brokers, topic and type-specific options from
// cfg.
func connectionFor(cfg config.Sink) (connection, error) {
	switch cfg.Type {
	case config.SinkKafka:
		return kafkaConnection(cfg)
	case config.SinkEventHubs:
		return eventHubsConnection(cfg)
	default:
		return connection{}, fmt.Errorf("type %q is not kafka or eventhubs", cfg.Type)
	}
}

// kafkaConnection is a plain Kafka cluster's: the configured brokers, TLS
// and SASL PLAIN if asked, and idempotent writes.
func kafkaConnection(cfg config.Sink) (connection, error) {
	if len(cfg.Brokers) == 0 {
		return connection{}, errors.New("at least one broker is required")
	}
	if cfg.Topic == "" {
		return connection{}, errors.New("topic is required")
	}
	c := connection{
		brokers: cfg.Brokers,
		topic:   cfg.Topic,
		opts: []kgo.Opt{
			// Idempotent writes let the broker drop the duplicates the
			// client's own retries would make. By default franz-go never
			// gives up on a request it sent without a reply, which could
			// hold a Write past its timeout; this lets it give up (the
			// spool's retry may then duplicate, which consumers absorb).
			kgo.AllowIdempotentProduceCancellation(),
		},
	}
	if cfg.TLS {
		c.opts = append(c.opts, kgo.DialTLSConfig(tlsConfig()))
	}
	switch strings.ToLower(cfg.SASL.Mechanism) {
	case "":
	case "plain":
		if cfg.SASL.Username == "" {
			return connection{}, errors.New("sasl.username is required with sasl.mechanism plain")
		}
		c.opts = append(c.opts, kgo.SASL(plain.Auth{User: cfg.SASL.Username, Pass: cfg.SASL.Password}.AsMechanism()))
		c.secrets = append(c.secrets, cfg.SASL.Password)
	default:
		return connection{}, fmt.Errorf("sasl.mechanism must be plain or empty, not %q", cfg.SASL.Mechanism)
	}
	return c, nil
}

// tlsConfig verifies brokers against the system roots.
func tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12}
}

// Name returns the sink's name.
func (k *Kafka) Name() string { return k.name }

// Write produces the batch and waits, at most the sink's timeout, for every
// record's acknowledgement.
func (k *Kafka) Write(ctx context.Context, batch []usage.Record) error {
	if len(batch) == 0 {
		return nil
	}
	recs, err := k.records(batch)
	if err != nil {
		return fmt.Errorf("%s sink %q: %w", k.kind, k.name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	// Canceling fails whatever is still buffered when Write gives up, so
	// that records of an abandoned Write do not pile up in the client.
	defer cancel()

	acks := newAcks(len(recs))
	for _, r := range recs {
		k.client.Produce(ctx, r, acks.promise)
	}
	// The client fails records when ctx ends, but a request already on the
	// wire can outlive ctx by the connection's deadline: Write does not wait
	// for it. Late promises only update acks, which nothing reads any more.
	select {
	case <-acks.done:
	case <-ctx.Done():
	}
	return k.result(acks, len(recs), ctx.Err())
}

// records builds one Kafka record per usage record. Values are slices of one
// buffer allocated per Write (not reused: a record abandoned by a timed-out
// Write may still be read by the client).
func (k *Kafka) records(batch []usage.Record) ([]*kgo.Record, error) {
	var buf bytes.Buffer
	buf.Grow(len(batch) * 1024) // a record is most often under 1 KB
	enc := json.NewEncoder(&buf)
	ends := make([]int, len(batch))
	for i := range batch {
		mark := buf.Len()
		if err := appendLine(enc, &batch[i]); err != nil {
			return nil, err
		}
		if n := buf.Len() - mark - 1; n > maxValueBytes {
			if err := k.fit(&buf, enc, mark, &batch[i], n); err != nil {
				return nil, err
			}
		}
		ends[i] = buf.Len() - 1 // without the newline
	}
	data := buf.Bytes()
	msgs := make([]kgo.Record, len(batch))
	out := make([]*kgo.Record, len(batch))
	start := 0
	for i := range batch {
		end := ends[i]
		m := &msgs[i]
		m.Topic = k.topic
		m.Key = []byte(batch[i].RequestID)
		m.Value = data[start:end:end]
		m.Headers = schemaHeaders
		if batch[i].Schema != usage.SchemaVersion {
			m.Headers = []kgo.RecordHeader{{Key: "schema", Value: []byte(strconv.Itoa(batch[i].Schema))}}
		}
		out[i] = m
		start = end + 1
	}
	return out, nil
}

// fit re-encodes r, which enc encoded to n bytes from mark in buf, with its
// captured text cut so that it fits maxValueBytes.
func (k *Kafka) fit(buf *bytes.Buffer, enc *json.Encoder, mark int, r *usage.Record, n int) error {
	cut, ok := trimCapture(r, n-maxValueBytes)
	if ok {
		buf.Truncate(mark)
		if err := appendLine(enc, cut); err != nil {
			return err
		}
		if m := buf.Len() - mark - 1; m <= maxValueBytes {
			k.log.Warn("usage record too large for a Kafka message: captured text truncated",
				slog.String("request_id", r.RequestID), slog.Int("bytes", n), slog.Int("limit", maxValueBytes))
			return nil
		}
	}
	return fmt.Errorf("record %q encodes to %d bytes, more than the %d a message may hold", r.RequestID, n, maxValueBytes)
}

// trimCapture returns a copy of r whose captured prompt and completion (the
// longer first) are cut, each ending with truncatedMark, so that the copy's
// JSON is at least over bytes shorter. ok is false when r has too little
// captured text for that.
func trimCapture(r *usage.Record, over int) (cut *usage.Record, ok bool) {
	if r.Capture == nil {
		return nil, false
	}
	out := *r
	c := *r.Capture
	out.Capture = &c
	fields := []*string{&c.Prompt, &c.Completion}
	if len(c.Completion) > len(c.Prompt) {
		fields[0], fields[1] = fields[1], fields[0]
	}
	for _, s := range fields {
		if over <= 0 {
			break
		}
		full := jsonLen(*s)
		if full <= jsonLen(truncatedMark) {
			continue
		}
		short := cutToJSON(*s, max(full-over, jsonLen(truncatedMark)))
		over -= full - jsonLen(short)
		*s = short
	}
	return &out, over <= 0
}

// cutToJSON returns the longest prefix of s, cut between runes and followed
// by truncatedMark, whose JSON string is at most budget bytes (budget must
// hold the mark alone). Escaping (\u003c for '<', \" ...) lengthens the JSON
// by an amount that depends on the text, hence a binary search.
func cutToJSON(s string, budget int) string {
	// align moves a cut back to the start of the rune it falls in.
	align := func(n int) int {
		for n > 0 && n < len(s) && !utf8.RuneStart(s[n]) {
			n--
		}
		return n
	}
	// Whether the prefix up to align(n) fits holds for n = 0 and, as n
	// grows, turns false for good: find the last n for which it holds.
	lo, hi := 0, len(s)
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if jsonLen(s[:align(mid)])+len(truncatedMark) <= budget {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return s[:align(lo)] + truncatedMark
}

// jsonLen is the length of s as a JSON string, quotes included.
func jsonLen(s string) int {
	b, _ := json.Marshal(s) // a string always encodes
	return len(b)
}

// result turns the acknowledgements of a Write into its error.
func (k *Kafka) result(a *acks, n int, ctxErr error) error {
	a.mu.Lock()
	left, failed, first := a.left, a.failed, a.first
	a.mu.Unlock()
	if left == 0 && failed == 0 {
		return nil
	}
	var msg strings.Builder
	fmt.Fprintf(&msg, "%s sink %q: %d of %d records not acknowledged", k.kind, k.name, left+failed, n)
	if left > 0 {
		fmt.Fprintf(&msg, " within %s", k.timeout)
	}
	if first != nil {
		fmt.Fprintf(&msg, ": %v", first)
	}
	if last := k.conn.last(); last != "" {
		fmt.Fprintf(&msg, " (last broker connection error: %s)", last)
	}
	cause := first
	if cause == nil {
		cause = ctxErr
	}
	text := msg.String()
	if safe := redacted(text, k.secrets...); safe != text {
		// Never seen in practice; if a broker ever echoed a credential,
		// drop the error chain that holds it.
		return errors.New(safe)
	}
	if cause == nil {
		return errors.New(text)
	}
	return &writeError{msg: text, err: cause}
}

// writeError is a Write failure: msg for people, err for errors.Is
// (context.DeadlineExceeded, kgo.ErrRecordTimeout, kerr codes).
type writeError struct {
	msg string
	err error
}

func (e *writeError) Error() string { return e.msg }
func (e *writeError) Unwrap() error { return e.err }

// Close closes the client within ctx. Records of a Write that timed out and
// are still in flight are failed (the spool still holds them).
func (k *Kafka) Close(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		k.client.Close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s sink %q: close: %w", k.kind, k.name, ctx.Err())
	}
}

// acks collects the promises of one Write.
type acks struct {
	mu     sync.Mutex
	left   int   // records not yet answered
	failed int   // records answered with an error
	first  error // the first error
	done   chan struct{}
}

func newAcks(n int) *acks { return &acks{left: n, done: make(chan struct{})} }

func (a *acks) promise(_ *kgo.Record, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.failed++
		if a.first == nil {
			a.first = err
		}
	}
	a.left--
	if a.left == 0 {
		close(a.done)
	}
}

// connWatch remembers the last failed broker connection (refused dial, TLS
// or SASL failure): a Write that times out reports it, so "wrong password"
// is told apart from "broker down". A successful connection clears it.
type connWatch struct {
	mu  sync.Mutex
	err string
}

var _ kgo.HookBrokerConnect = (*connWatch)(nil)

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (w *connWatch) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		w.err = ""
		return
	}
	w.err = net.JoinHostPort(meta.Host, strconv.Itoa(int(meta.Port))) + ": " + err.Error()
}

func (w *connWatch) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// kgoLogger sends franz-go's warnings and errors to slog; its info lines
// (every connection and metadata refresh) are too chatty for a gateway log.
type kgoLogger struct {
	log     *slog.Logger
	secrets []string
}

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelWarn
	if level == kgo.LogLevelError {
		lvl = slog.LevelError
	}
	// Values may carry broker error text: redact the way errors are.
	for i, v := range keyvals {
		switch v := v.(type) {
		case error:
			keyvals[i] = redacted(v.Error(), l.secrets...)
		case string:
			keyvals[i] = redacted(v, l.secrets...)
		}
	}
	l.log.Log(context.Background(), lvl, "kafka client: "+msg, keyvals...)
}
