package sink

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/tokengate/tokengate/internal/config"
)

// Event Hubs' Kafka endpoint: port 9093, TLS, SASL PLAIN with this user name
// and the connection string as the password.
const (
	eventHubsPort = "9093"
	eventHubsUser = "$ConnectionString"
)

// connectionString is what the sink reads from an Event Hubs connection
// string ("Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=
// NAME;SharedAccessKey=KEY[;EntityPath=HUB]").
type connectionString struct {
	// Host is the namespace's host name, e.g. "ns.servicebus.windows.net".
	Host string
	// KeyName is the shared access policy's name.
	KeyName string
	// EntityPath is the event hub an entity-level policy is scoped to.
	EntityPath string
	// Key is the shared access key.
	Key string
	// Raw is the whole string without surrounding white space: the SASL
	// password.
	Raw string
}

// parseConnectionString parses an Event Hubs connection string. Keys are
// case-insensitive, white space around parts and empty parts (a trailing
// ';') are ignored, unknown keys are ignored. Errors never quote the key.
func parseConnectionString(s string) (connectionString, error) {
	cs := connectionString{Raw: strings.TrimSpace(s)}
	if cs.Raw == "" {
		return cs, errors.New("connection_string is empty (is EVENTHUBS_CONNECTION_STRING set?)")
	}
	var endpoint string
	seen := map[string]bool{}
	for i, part := range strings.Split(cs.Raw, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			// The part may be a mangled key: say where, not what.
			return cs, fmt.Errorf("connection_string: part %d is not key=value", i+1)
		}
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		if seen[k] {
			return cs, fmt.Errorf("connection_string: %s appears twice", k)
		}
		seen[k] = true
		switch k {
		case "endpoint":
			endpoint = v
		case "sharedaccesskeyname":
			cs.KeyName = v
		case "sharedaccesskey":
			cs.Key = v
		case "entitypath":
			cs.EntityPath = v
		case "sharedaccesssignature":
			return cs, errors.New("connection_string: a SharedAccessSignature token is not accepted by the Event Hubs Kafka endpoint; use a policy's connection string (SharedAccessKeyName and SharedAccessKey)")
		}
	}
	if endpoint == "" {
		return cs, errors.New("connection_string: Endpoint is missing (want Endpoint=sb://NAMESPACE.servicebus.windows.net/)")
	}
	u, err := url.Parse(endpoint)
	if err != nil || !strings.EqualFold(u.Scheme, "sb") || u.Hostname() == "" || u.User != nil || strings.Trim(u.Path, "/") != "" {
		// Not quoted: a missing ';' could have glued the key onto it.
		return cs, errors.New("connection_string: Endpoint is not sb://NAMESPACE.servicebus.windows.net/")
	}
	cs.Host = strings.ToLower(u.Hostname())
	switch {
	case cs.KeyName == "":
		return cs, errors.New("connection_string: SharedAccessKeyName is missing")
	case cs.Key == "":
		return cs, errors.New("connection_string: SharedAccessKey is missing")
	}
	return cs, nil
}

// eventHubsConnection is an Event Hubs namespace's Kafka endpoint, with the
// client set up for what the endpoint supports (docs/event-hubs.md has the
// sources):
//   - no idempotent writes: Microsoft asks request.timeout.ms >= 60 s for
//     them, longer than a Write may take, and franz-go's idempotent producer
//     was seen hanging against Event Hubs (twmb/franz-go#520);
//   - no compression: only gzip is supported, on Premium and Dedicated only,
//     and franz-go's default is snappy;
//   - requests of at most 1,000,000 bytes: the service closes the connection
//     on a request over 1,046,528 bytes;
//   - metadata refreshed every 180 s, under the 240 s after which Azure
//     closes idle connections.
func eventHubsConnection(cfg config.Sink) (connection, error) {
	cs, err := parseConnectionString(cfg.ConnectionString)
	if err != nil {
		return connection{}, err
	}
	topic := cfg.Topic
	switch {
	case topic == "" && cs.EntityPath == "":
		return connection{}, errors.New("topic (the event hub's name) is required")
	case topic == "":
		topic = cs.EntityPath
	case cs.EntityPath != "" && cs.EntityPath != topic:
		return connection{}, fmt.Errorf("topic %q is not the connection string's EntityPath %q, the only event hub its policy grants", topic, cs.EntityPath)
	}
	return connection{
		brokers: []string{cs.Host + ":" + eventHubsPort},
		topic:   topic,
		opts: []kgo.Opt{
			kgo.DialTLSConfig(tlsConfig()),
			kgo.SASL(plain.Auth{User: eventHubsUser, Pass: cs.Raw}.AsMechanism()),
			kgo.DisableIdempotentWrite(),
			kgo.ProducerBatchCompression(kgo.NoCompression()),
			kgo.BrokerMaxWriteBytes(maxRequestBytes),
			kgo.MetadataMaxAge(180 * time.Second),
		},
		secrets: []string{cs.Raw, cs.Key},
	}, nil
}
