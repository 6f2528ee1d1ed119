// Package loadtest owns "tokengate loadtest": a load generator for any Azure
// OpenAI- or OpenAI-compatible chat completions endpoint (the gateway, the
// simulator, a real Azure OpenAI resource) and the report it produces.
//
// # Load models
//
// Open loop ([Config.Rate] > 0): requests arrive at a constant rate whatever
// the server does. A dedicated scheduler computes intended send times
// t0 + i/rate and hands each arrival to a pool of workers that grows as
// needed, so a slow response never delays the arrivals behind it. Latency is
// measured from the intended send time, not from the moment the request was
// actually written, which avoids coordinated omission: when the server (or
// the generator) falls behind, the waiting shows up in the latencies. With
// [Config.Concurrency] > 0 as well, at most that many requests are in flight;
// further arrivals queue (first in, first out) for a free slot, their waiting
// counted in their latency. schedule_lag measures how far behind their
// intended times requests were actually sent; when it grows without a
// concurrency limit, the generator itself is saturated.
//
// Closed loop ([Config.Rate] == 0, [Config.Concurrency] > 0): that many
// workers each send requests back to back, starting spread over
// [Config.Ramp] so thousands of connections do not hit the server's listen
// backlog at once. Latency is measured from the actual send. A worker whose
// request got no response at all pauses 10ms before the next, so an
// unreachable target is not hammered in a busy loop.
//
// A request's latency ends when its body has been read to the end, or for a
// stream at data: [DONE]; TTFT ends at the first chunk with content.
//
// The run lasts Warmup + Duration. Requests sent (closed loop) or due (open
// loop) during the warmup are sent but not reported. When the time is up no
// new request starts and the ones in flight finish, each bounded by
// [Config.Timeout]. When the context is cancelled (Ctrl-C) sending stops at
// once, requests in flight get [Config.Grace] to finish and are then cut
// (reported as transport error "canceled"), and queued arrivals are counted
// as unsent.
//
// Every request is a chat completion. The prompt is built once per size
// from common one-token words, so a prompt of N tokens is N words and costs
// the backend about N prompt tokens plus the chat framing. Request bodies are
// built once per (model, prompt size, stream) and reused. Streaming requests
// ask for stream_options.include_usage so tokens are counted from the final
// chunk. The client speaks HTTP/1.1 over one connection per request in
// flight (as the common SDKs do), without compression and ignoring proxy
// environment variables.
//
// # Mix file
//
// --mix FILE describes a request mix in YAML (unknown keys are errors);
// command-line flags given explicitly override it:
//
//	stream_share: 0.3          # fraction of requests with "stream": true
//	max_tokens: 128            # sent as max_tokens
//	prompt_tokens:             # prompt size distribution, picked per request by weight
//	  - {tokens: 50, weight: 3}
//	  - {tokens: 2000, weight: 1}
//	models:                    # deployment / model aliases, picked per request by weight
//	  - {alias: gpt-4o, weight: 3}
//	  - {alias: gpt-4o-mini, weight: 1}
//	apps:                      # each app sends its own headers, e.g. its own token
//	  - {name: chat-app, weight: 1, headers: {Authorization: "Bearer ${CHAT_TOKEN}"}}
//	  - {name: batch-app, weight: 1, headers: {api-key: "${BATCH_KEY}"}}
//
// Weights default to 1 (0 counts as unset). ${NAME} in header values is replaced by the
// environment variable NAME; an unset variable is an error. --header
// headers are sent with every app's requests and win over an app's header of
// the same name.
//
// # Report
//
// The JSON report (--json) has these fields; their names are stable.
// Latencies are in milliseconds, as floats, and cover successful requests
// only (2xx, body read to the end; for a stream up to data: [DONE]).
//
//	report_version       1; bumped only when a field changes meaning
//	mode                 "open" or "closed"
//	url                  the target base URL (never any header)
//	api                  "azure" or "v1"
//	rate                 requested arrivals per second (open loop)
//	concurrency          workers (closed loop) or the in-flight limit (open loop); 0 = none
//	stream_share         fraction of requests sent with "stream": true
//	duration_s           the configured measured duration, seconds
//	warmup_s             the configured warmup, seconds
//	elapsed_s            measured wall time: from the end of the warmup to the last completion
//	interrupted          true when the run was cancelled (Ctrl-C) before its end
//	scheduled            open loop: arrivals due in the measured window
//	sent                 requests written to the connection
//	unsent               open loop: arrivals never sent (still queued when interrupted)
//	completed            responses read to the end, whatever their status
//	succeeded            completed 2xx responses (streams with [DONE])
//	errors               non-2xx responses + transport errors + incomplete streams and bodies
//	sent_rate            sent / duration_s: the offered rate (open loop: the arrival rate reached)
//	achieved_rate        completed / elapsed_s: throughput, the tail of the last responses included
//	succeeded_rate       succeeded / elapsed_s
//	peak_in_flight       most requests in flight at once (whole run)
//	latency_ms           {count, mean, min, p50, p90, p99, p99_9, max} of all successes
//	latency_json_ms      same, non-streaming requests only
//	latency_stream_ms    same, streaming requests only (to [DONE])
//	ttft_ms              streaming: time to the first chunk with content
//	schedule_lag_ms      open loop only: actual send time minus intended send time
//	prompt_tokens        sum of usage.prompt_tokens of successes
//	completion_tokens    sum of usage.completion_tokens of successes
//	prompt_tokens_per_s  prompt_tokens / elapsed_s
//	completion_tokens_per_s  completion_tokens / elapsed_s
//	missing_usage        successes whose response carried no usage
//	status_codes         {"200": n, "429": n, ...}: responses by status (including incomplete ones)
//	throttled            responses with status 429
//	transport_errors     {"connection_refused": n, ...}: requests that got no response, by kind
//	                     (connection_refused, connection_reset, connection_closed, timeout,
//	                     canceled, too_many_open_files, address_not_available, dns, tls, other)
//	incomplete_streams   2xx streams that ended without data: [DONE]
//	incomplete_bodies    2xx JSON bodies cut before their end
//	by_app, by_model     when the mix has more than one: [{name, sent, succeeded, errors,
//	                     throttled, status_codes, transport_errors}]
//
// sent = completed + incomplete_streams + incomplete_bodies + the sum of
// transport_errors.
package loadtest
