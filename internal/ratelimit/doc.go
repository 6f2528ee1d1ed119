// Package ratelimit owns per-app request and token limits: rolling
// requests- and tokens-per-minute windows, calendar-period token quotas and
// monthly budgets, for apps, their teams, their users and their models. It
// admits each request against every limit that applies, all or nothing, and
// settles the reservation to the actual usage afterwards.
//
// # Counting
//
// rpm and tpm count over a rolling window (limits.window, default one
// minute) of buckets: 60 one-second buckets for a minute. Admission counts
// the request in the current bucket; a bucket leaves the window once all of
// it is older than the window, so no span of the window's length ever sees
// more than the limit admitted, and capacity returns exactly as buckets
// leave (Retry-After says when enough has left for the refused request).
// The window starts with its whole capacity: 1,000 simultaneous requests
// against 600 rpm admit exactly 600.
//
// Quotas (tokens_per_hour, _day, _month) count fixed calendar periods in
// limits.time_zone, DST included. Admission reserves the caller's estimate
// (prompt plus the completion maximum); Settle replaces it with the actual
// tokens, refunding or charging the difference. An excess can push a
// counter over its limit: later requests wait until it has left.
//
// A budget admits while the month's spent cost is below it; the cost is
// known only when the response is done, so nothing is reserved and Settle
// adds it. The requests in flight when a budget runs out therefore overrun
// it by their cost: a deliberate trade, since reserving a worst-case cost
// would refuse requests an app can afford.
//
// Shadow limits are judged like the others but never refuse: a would-be
// refusal is logged and listed in Reservation.ShadowRefused. A shadow
// limit's counter takes only what it would have admitted, so it shows what
// enforcing it would do.
//
// # Stores
//
// store: memory keeps counters in this process (one gateway; lost on
// restart). store: redis keeps them in Redis, where one Lua script per
// admission checks and takes every counter of the request in one round
// trip, so any number of replicas together never over-admit; the scripts
// read the server's clock, which replicas share.
//
// While Redis is unreachable (a call failing or exceeding
// limits.redis.timeout) the Limiter logs once, counts the failures
// (StoreErrors), and either enforces each limit divided by limits.replicas
// in a local memory store (on_store_error: open) or refuses with 503
// (closed). One request per second probes Redis; the first that succeeds
// ends the outage. Local quotas start from zero, so an outage can admit up
// to one extra period's quota across the replicas.
//
// # Reloads
//
// A reloaded configuration gets a new Limiter built WithPrevious(old): it
// keeps the old one's counters (shared in memory, the same keys in Redis),
// so a reload resets no window, quota or budget, and a changed number
// applies to what is already counted. Reservations taken by the old
// Limiter settle into the same counters, even after it is closed. Only a
// changed limits.window restarts the rates, and a changed store all
// counters.
//
// # Observing
//
// Peek reads an app's limits and their usage without taking anything;
// EachDecision and RefusedBy tell which limit decided a request, for
// metrics.
package ratelimit
