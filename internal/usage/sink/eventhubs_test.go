package sink

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/tokengate/tokengate/internal/config"
	"github.com/tokengate/tokengate/internal/testenv"
)

const (
	// testKey ends in base64 padding, like real keys: the parser must split
	// a part on its first '=' only.
	testKey        = "dGhpcyBpcyBub3QgYSByZWFsIGtleSBhdCBhbGw="
	testConnString = "Endpoint=sb://tgtest.servicebus.windows.net/;SharedAccessKeyName=tokengate-send;SharedAccessKey=" + testKey
)

func TestParseConnectionString(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		host   string
		entity string
		err    string // substring of the error; "" for success
	}{
		{name: "portal form", in: testConnString, host: "tgtest.servicebus.windows.net"},
		{name: "entity path", in: testConnString + ";EntityPath=usage", host: "tgtest.servicebus.windows.net", entity: "usage"},
		{name: "trailing semicolons", in: testConnString + ";;", host: "tgtest.servicebus.windows.net"},
		{name: "white space around parts and string", in: "\n  Endpoint = sb://tgtest.servicebus.windows.net/ ; SharedAccessKeyName=send;\tSharedAccessKey=" + testKey + " ;\n", host: "tgtest.servicebus.windows.net"},
		{name: "keys in any case, no trailing slash", in: "endpoint=SB://TGTest.servicebus.windows.net;sharedaccesskeyname=send;SHAREDACCESSKEY=" + testKey, host: "tgtest.servicebus.windows.net"},
		{name: "sovereign cloud", in: "Endpoint=sb://ns.servicebus.chinacloudapi.cn/;SharedAccessKeyName=s;SharedAccessKey=" + testKey, host: "ns.servicebus.chinacloudapi.cn"},
		{name: "unknown keys ignored", in: testConnString + ";TransportType=Amqp", host: "tgtest.servicebus.windows.net"},
		{name: "empty", in: "  ", err: "empty"},
		{name: "unset variable", in: "${EVENTHUBS_CONNECTION_STRING}", err: "not key=value"},
		{name: "missing endpoint", in: "SharedAccessKeyName=s;SharedAccessKey=" + testKey, err: "Endpoint is missing"},
		{name: "no sb scheme", in: "Endpoint=tgtest.servicebus.windows.net;SharedAccessKeyName=s;SharedAccessKey=" + testKey, err: "not sb://"},
		{name: "https scheme", in: "Endpoint=https://tgtest.servicebus.windows.net/;SharedAccessKeyName=s;SharedAccessKey=" + testKey, err: "not sb://"},
		{name: "path in endpoint", in: "Endpoint=sb://tgtest.servicebus.windows.net/hub;SharedAccessKeyName=s;SharedAccessKey=" + testKey, err: "not sb://"},
		{name: "missing semicolon glues the key on", in: "Endpoint=sb://tgtest.servicebus.windows.net/SharedAccessKey=" + testKey + ";SharedAccessKeyName=s", err: "not sb://"},
		{name: "missing key name", in: "Endpoint=sb://tgtest.servicebus.windows.net/;SharedAccessKey=" + testKey, err: "SharedAccessKeyName is missing"},
		{name: "missing key", in: "Endpoint=sb://tgtest.servicebus.windows.net/;SharedAccessKeyName=s", err: "SharedAccessKey is missing"},
		{name: "empty key", in: "Endpoint=sb://tgtest.servicebus.windows.net/;SharedAccessKeyName=s;SharedAccessKey=", err: "SharedAccessKey is missing"},
		{name: "SAS token", in: "Endpoint=sb://tgtest.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig=" + testKey, err: "SharedAccessSignature"},
		{name: "key twice", in: testConnString + ";SharedAccessKey=" + testKey, err: "twice"},
		{name: "part without =", in: "garbage;" + testConnString, err: "part 1 is not key=value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, err := parseConnectionString(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), testKey) {
					t.Errorf("error quotes the key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cs.Host != tc.host || cs.EntityPath != tc.entity || cs.Key != testKey || cs.KeyName == "" {
				t.Errorf("parsed %+v", cs)
			}
			if cs.Raw != strings.TrimSpace(tc.in) {
				t.Errorf("password %q, want the whole string trimmed", cs.Raw)
			}
		})
	}
}

func FuzzParseConnectionString(f *testing.F) {
	const secret = "Zm9vYmFyYmF6cXV4c2VjcmV0a2V5"
	f.Add("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=n;", ";EntityPath=hub")
	f.Add("", "")
	f.Add("Endpoint=sb://", "")
	f.Add("Endpoint=sb://ns/x;", ";;=;")
	f.Fuzz(func(t *testing.T, prefix, suffix string) {
		in := prefix + "SharedAccessKey=" + secret + suffix
		cs, err := parseConnectionString(in)
		if err != nil {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error quotes the key: %v", err)
			}
			return
		}
		if cs.Host == "" || cs.KeyName == "" || cs.Key == "" || cs.Raw != strings.TrimSpace(in) {
			t.Fatalf("accepted %q as %+v", in, cs)
		}
	})
}

func TestEventHubsTopic(t *testing.T) {
	for _, tc := range []struct {
		name, topic, entity, want string
	}{
		{"topic only", "usage", "", "usage"},
		{"entity path only", "", "usage", "usage"},
		{"both agree", "usage", "usage", "usage"},
		{"they differ", "usage", "other", ""},
		{"neither", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := testConnString
			if tc.entity != "" {
				cs += ";EntityPath=" + tc.entity
			}
			c, err := eventHubsConnection(config.Sink{Type: config.SinkEventHubs, Topic: tc.topic, ConnectionString: cs})
			if tc.want == "" {
				if err == nil {
					t.Fatalf("accepted topic %q with EntityPath %q", tc.topic, tc.entity)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.topic != tc.want {
				t.Errorf("topic %q, want %q", c.topic, tc.want)
			}
		})
	}
}

// checkOpt asserts the client's value for a kgo option.
func checkOpt(t *testing.T, k *Kafka, opt, want any) {
	t.Helper()
	if got := k.client.OptValue(opt); !reflect.DeepEqual(got, want) {
		t.Errorf("%T option: %#v, want %#v", opt, got, want)
	}
}

// checkPlain asserts that the client authenticates with SASL PLAIN as
// user/pass (the PLAIN message is authzid NUL user NUL pass).
func checkPlain(t *testing.T, k *Kafka, user, pass string) {
	t.Helper()
	ms := k.client.OptValue(kgo.SASL).([]sasl.Mechanism)
	if len(ms) != 1 || ms[0].Name() != "PLAIN" {
		t.Fatalf("SASL mechanisms %v, want PLAIN", ms)
	}
	_, msg, err := ms[0].Authenticate(context.Background(), "broker:9093")
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x00" + user + "\x00" + pass; string(msg) != want {
		t.Errorf("PLAIN message for user %q does not carry the expected password", strings.SplitN(string(msg), "\x00", 3)[1])
	}
}

func TestEventHubsOptions(t *testing.T) {
	cfg := config.Sink{
		Name: "eh", Type: config.SinkEventHubs, Topic: "usage", Timeout: 30 * time.Second,
		ConnectionString: "  " + testConnString + ";EntityPath=usage\n",
	}
	k := newKafkaSink(t, cfg, nil)
	raw := testConnString + ";EntityPath=usage"
	checkOpt(t, k, kgo.SeedBrokers, []string{"tgtest.servicebus.windows.net:9093"})
	checkOpt(t, k, kgo.DefaultProduceTopic, "usage")
	checkPlain(t, k, "$ConnectionString", raw)
	tc, _ := k.client.OptValue(kgo.DialTLSConfig).(*tls.Config)
	if tc == nil || tc.MinVersion != tls.VersionTLS12 || tc.RootCAs != nil || tc.InsecureSkipVerify {
		t.Errorf("TLS config %+v, want TLS 1.2+ against the system roots", tc)
	}
	checkOpt(t, k, kgo.DisableIdempotentWrite, true)
	checkOpt(t, k, kgo.ProducerBatchCompression, []kgo.CompressionCodec{kgo.NoCompression()})
	checkOpt(t, k, kgo.BrokerMaxWriteBytes, int32(maxRequestBytes))
	checkOpt(t, k, kgo.ProducerBatchMaxBytes, int32(maxRequestBytes))
	checkOpt(t, k, kgo.MetadataMaxAge, 180*time.Second)
	checkOpt(t, k, kgo.RequiredAcks, kgo.AllISRAcks())
	checkOpt(t, k, kgo.RecordDeliveryTimeout, 30*time.Second)
	checkOpt(t, k, kgo.ProduceRequestTimeout, 30*time.Second)
	checkOpt(t, k, kgo.DialTimeout, 10*time.Second)

	if _, err := NewKafka(config.Sink{Name: "eh", Type: config.SinkEventHubs, Topic: "usage", Timeout: time.Second,
		ConnectionString: "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=" + testKey}, nil); err == nil ||
		strings.Contains(err.Error(), testKey) || !strings.Contains(err.Error(), `eventhubs sink "eh"`) {
		t.Errorf("bad connection string: %v", err)
	}
}

// testTLS returns a self-signed certificate for 127.0.0.1 as a server
// config and a client config that trusts only it.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}, MinVersion: tls.VersionTLS12}
	client = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return server, client
}

// TestEventHubsOverTLS runs an eventhubs sink against a kfake cluster that
// listens with TLS only and authenticates like Event Hubs: SASL PLAIN, user
// $ConnectionString, the connection string as the password. The test points
// the sink at the fake (instead of NAMESPACE:9093) and trusts its
// certificate; everything else is the sink's own Event Hubs setup.
func TestEventHubsOverTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	c := newCluster(t, kfake.TLS(serverTLS), kfake.Superuser("PLAIN", eventHubsUser, testConnString))
	cfg := config.Sink{Name: "eh", Type: config.SinkEventHubs, Topic: testTopic, ConnectionString: " " + testConnString + "\n", Timeout: 5 * time.Second}
	redirect := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.DialTLSConfig(clientTLS)}
	k := newKafkaSink(t, cfg, nil, redirect...)

	batch := testRecords(0, 100)
	if err := k.Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	got := consume(t, c.ListenAddrs(), len(batch), kgo.DialTLSConfig(clientTLS), saslOpt(eventHubsUser, testConnString))
	checkRecords(t, got, batch)

	t.Run("wrong key", func(t *testing.T) {
		const otherKey = "b3RoZXIga2V5IG5vdCB0aGUgcmlnaHQgb25lIGF0IGFsbA=="
		logs := &testenv.Buffer{}
		bad := cfg
		bad.ConnectionString = strings.Replace(testConnString, testKey, otherKey, 1)
		bad.Timeout = time.Second
		k := newKafkaSink(t, bad, slogTo(logs), redirect...)
		start := time.Now()
		err := k.Write(context.Background(), testRecords(0, 1))
		if err == nil {
			t.Fatal("Write with a wrong key succeeded")
		}
		t.Logf("error after %v: %v", time.Since(start).Round(time.Millisecond), err)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Write took %v, timeout 1s", took)
		}
		for _, text := range []string{err.Error(), logs.String()} {
			if strings.Contains(text, otherKey) || strings.Contains(text, "SharedAccessKey=") {
				t.Errorf("connection string leaked: %s", text)
			}
		}
	})

	t.Run("no TLS is no connection", func(t *testing.T) {
		// The sink never falls back to plaintext: against a plaintext
		// listener the TLS handshake fails and Write times out.
		plainCluster := newCluster(t, kfake.Superuser("PLAIN", eventHubsUser, testConnString))
		short := cfg
		short.Timeout = time.Second
		k := newKafkaSink(t, short, nil, kgo.SeedBrokers(plainCluster.ListenAddrs()...), kgo.DialTLSConfig(clientTLS))
		if err := k.Write(context.Background(), testRecords(0, 1)); err == nil {
			t.Fatal("eventhubs sink delivered over plaintext")
		}
	})
}
