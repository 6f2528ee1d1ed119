package app

import (
	"context"
	"net/http"

	"github.com/tokengate/tokengate/internal/openai"
	"github.com/tokengate/tokengate/internal/ratelimit"
	"github.com/tokengate/tokengate/internal/tokens"
)

// limit admits the request against the caller's app, team, user and model
// limits, reserving one request and its estimated tokens (prompt estimate
// plus the completion maximum for every choice); the reservation is settled
// to the actual usage when the response is done. Refusals are 429s (403 for
// quotas when so configured) with Retry-After and the x-ratelimit-* headers
// the SDKs' backoff reads.
func (rt *runtime) limit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := exchangeOf(r.Context())
		if !rt.limiter.Limited(x.caller.App) {
			next.ServeHTTP(w, r) // nothing to reserve: no body estimate on the hot path
			return
		}
		s := ratelimit.Subject{App: x.caller.App, User: x.caller.ObjectID, Model: x.alias}
		res, err := rt.limiter.Admit(r.Context(), s, rt.estimate(x, r))
		app := x.caller.App.Name
		if err != nil {
			if id := ratelimit.RefusedBy(err); id != "" {
				rt.metrics.LimitDecision(app, id, "refused")
			}
			openai.WriteError(w, err)
			return
		}
		res.EachDecision(func(limit string, shadowRefused bool) {
			outcome := "admitted"
			if shadowRefused {
				outcome = "shadow_refused"
			}
			rt.metrics.LimitDecision(app, limit, outcome)
		})
		x.reservation = res
		// Whoever reserves settles, whatever happens downstream (a refusal
		// by the balancer, a panic, a hang-up): forward's deferred settle
		// has filled tokens and cost by then (0 when nothing was served).
		defer func() { res.Settle(context.WithoutCancel(r.Context()), x.tokens.Total, x.charge.Amount) }()
		res.Headers(w.Header())
		next.ServeHTTP(w, r)
	})
}

// estimate is the tokens a request reserves: the prompt, estimated from the
// body in one pass (exact counting of a large prompt is too slow for the
// request path; the reservation is settled to the backend's count), plus
// the completion maximum (max_completion_tokens, max_tokens, or
// limits.completion_estimate when the request names none) for each choice.
func (rt *runtime) estimate(x *exchange, r *http.Request) int64 {
	b, ok := r.Body.(*body)
	if !ok || !x.route.Op.Metered() {
		return 0
	}
	prompt := int64(tokens.ForModel(x.alias).EstimateBody(b.buf.Bytes()))
	if x.route.Op == openai.OpEmbeddings {
		return prompt
	}
	completion := x.body.MaxCompletionTokens
	if completion == 0 {
		completion = x.body.MaxTokens
	}
	if completion == 0 {
		completion = rt.cfg.Limits.CompletionEstimate
	}
	return prompt + completion*max(x.body.N, 1)
}
