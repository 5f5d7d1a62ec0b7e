package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// Lineage latency (issue 14): how fast a use of a watched token reaches
// the OTLP endpoint as a token_use record, and whether a flood of uses
// delays token requests. Both run the tokenwatch pipeline of the latency
// benchmark, with its routine lines and alerting token creates, whose
// token_request latency is the baseline of the same run.

const (
	eventTokenRequest = "tokenwatch.token_request"
	eventTokenUse     = "tokenwatch.token_use"
	// usesPerToken is how many uses (each from a new source IP) one token
	// gets before the next: below the agent's 32 reason keys per token,
	// beyond which uses are only counted.
	usesPerToken = 20
	// floodPeriod is how long each phase of the flood run lasts: calm,
	// flood, calm, flood, ...
	floodPeriod = 5 * time.Second
)

// mintLine is alertLine for a create that issued the token jti (the
// annotation kube-apiserver 1.30+ logs): its record puts jti on the watch.
func mintLine(id string, sa int, jti string, now time.Time) []byte {
	return bytes.Replace(alertLine(id, sa, now), []byte(`"annotations":{`),
		fmt.Appendf(nil, `"annotations":{"authentication.kubernetes.io/issued-credential-id":"JTI=%s",`, jti), 1)
}

// useLine is a completed request by service account team-a/sa-<sa>
// authenticated with the token jti, from ip, received now: a get of a
// configmap, or with secrets a list of secrets (a sensitive action),
// answered with code.
func useLine(id string, sa int, jti, ip string, code int, secrets bool, now time.Time) []byte {
	ts := now.UTC().Format("2006-01-02T15:04:05.000000Z")
	verb, uri, ref := "get", "/api/v1/namespaces/team-a/configmaps/app-config",
		`{"resource":"configmaps","namespace":"team-a","name":"app-config","apiVersion":"v1"}`
	if secrets {
		verb, uri, ref = "list", "/api/v1/namespaces/team-a/secrets", `{"resource":"secrets","namespace":"team-a","apiVersion":"v1"}`
	}
	decision := "allow"
	if code == 403 {
		decision = "forbid"
	}
	return fmt.Appendf(nil, `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":%q,"stage":"ResponseComplete",`+
		`"requestURI":%q,"verb":%q,"user":{"username":"system:serviceaccount:team-a:sa-%d","uid":"0b6f3c2e-7d1a-4c55-9e0f-2a8b4d6c8e10",`+
		`"groups":["system:serviceaccounts","system:serviceaccounts:team-a","system:authenticated"],`+
		`"extra":{"authentication.kubernetes.io/credential-id":["JTI=%s"]}},"sourceIPs":[%q],"userAgent":"bench-client/v1.0.0",`+
		`"objectRef":%s,"responseStatus":{"metadata":{},"code":%d},"requestReceivedTimestamp":%q,"stageTimestamp":%q,`+
		`"annotations":{"authorization.k8s.io/decision":%q,"authorization.k8s.io/reason":""}}`+"\n",
		id, uri, verb, sa, jti, ip, ref, code, ts, ts, decision)
}

// benchJTI is the uuid of the n-th token minted by a run of kind
// (0: uses, 1: flood).
func benchJTI(kind, n int) string { return fmt.Sprintf("7e57%04x-0000-4000-8000-%012x", kind, n) }

// useIP is the source IP of the i-th use: a new one for each.
func useIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", 1+(i>>16)&127, (i>>8)&255, i&255) }

// usesMix appends rate uses a second of pre-minted tokens, usesPerToken
// uses each, every use from a new source IP, so that each one brings a
// new_source_ip reason and so a token_use record.
type usesMix struct {
	rate int
	jtis []string
	n    int
}

func (m *usesMix) add(chunk *bytes.Buffer, el time.Duration, now time.Time) []string {
	var ids []string
	for due := int(float64(m.rate)*el.Seconds()) - m.n; due > 0 && m.n/usesPerToken < len(m.jtis); due-- {
		tok := m.n / usesPerToken
		id := fmt.Sprintf("use-%d", m.n)
		chunk.Write(useLine(id, 1000+tok, m.jtis[tok], useIP(m.n), 200, false, now))
		ids = append(ids, id)
		m.n++
	}
	return ids
}

func (m *usesMix) phase(time.Duration) string { return "" }

// floodIPs are the few source IPs of the flood: its uses are counted, not
// sent one by one.
var floodIPs = []string{"10.200.0.1", "10.200.0.2", "10.200.0.3", "10.200.0.4"}

// floodMix appends rate uses a second of one watched token during every
// other floodPeriod ("flood"; the others are "calm"): gets of a configmap
// and, one in four, a list of secrets denied with 403.
type floodMix struct {
	rate int
	jti  string
	n    int
}

func (m *floodMix) phase(el time.Duration) string {
	if (el/floodPeriod)%2 == 1 {
		return "flood"
	}
	return "calm"
}

// floodTime is how long the flood has run at el.
func floodTime(el time.Duration) time.Duration {
	k := el / floodPeriod
	on := k / 2 * floodPeriod
	if k%2 == 1 {
		on += el - k*floodPeriod
	}
	return on
}

func (m *floodMix) add(chunk *bytes.Buffer, el time.Duration, now time.Time) []string {
	for due := int(float64(m.rate)*floodTime(el).Seconds()) - m.n; due > 0; due-- {
		denied := m.n%4 == 3
		code := 200
		if denied {
			code = 403
		}
		chunk.Write(useLine(fmt.Sprintf("flood-%d", m.n), 999, m.jti, floodIPs[m.n%len(floodIPs)], code, denied, now))
		m.n++
	}
	return nil
}

// premint appends n token creates issuing benchJTI(kind, 0..n-1) and waits
// until each one's token_request record arrived and the agent holds the
// watches, so that the tokens are watched before they are used.
func premint(ctx context.Context, env *latencyEnv, kind, n int) ([]string, error) {
	var chunk bytes.Buffer
	var jtis, ids []string
	now := time.Now()
	for i := range n {
		jti, id := benchJTI(kind, i), fmt.Sprintf("mint-%d-%d", kind, i)
		sa := 1000 + i
		if kind == 1 {
			sa = 999
		}
		chunk.Write(mintLine(id, sa, jti, now))
		jtis, ids = append(jtis, jti), append(ids, id)
	}
	if _, err := env.f.Write(chunk.Bytes()); err != nil {
		return nil, fmt.Errorf("append to %s: %w", env.live, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := waitEvents(ctx, env, eventTokenRequest, ids); err != nil {
		return nil, fmt.Errorf("mints of the watched tokens: %w\n%s", err, env.tails())
	}
	for {
		w, err := sumMetric(ctx, "http://"+env.metrics+"/metrics", `tokenwatch_agent_lineage_watches{kind="token"}`)
		if err == nil && w >= int64(n) {
			return jtis, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent holds %d token watches of %d: %w\n%s", w, n, ctx.Err(), env.tails())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitEvents waits until a record named eventName arrived for every id.
func waitEvents(ctx context.Context, env *latencyEnv, eventName string, ids []string) error {
	for {
		missing := 0
		for _, id := range ids {
			if _, ok := env.sink.ArrivalOf(eventName, id); !ok {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d %s records missing: %w", missing, len(ids), eventName, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// byPrefix splits ids by their prefix, in order.
func byPrefix(ids []string, prefixes ...string) map[string][]string {
	out := map[string][]string{}
	for _, id := range ids {
		for _, p := range prefixes {
			if strings.HasPrefix(id, p) {
				out[p] = append(out[p], id)
				break
			}
		}
	}
	return out
}

// settle waits up to 60 s for a record named eventName of each of ids.
func settle(ctx context.Context, env *latencyEnv, eventName string, ids []string) {
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	_ = waitEvents(wctx, env, eventName, ids)
	cancel()
}

// tokensFor is how many tokens uses a second for dur need.
func tokensFor(uses int, dur time.Duration) int {
	return (uses*int(dur.Seconds())+usesPerToken-1)/usesPerToken + 1
}

// usesResult is one run of the token_use figure.
type usesResult struct {
	req, use latencyResult
	lookback int64 // uses the agent found by reading again
}

// usesRun measures, in one run at rate lines/s, token_request latency and
// the latency of uses uses/s of watched tokens to their token_use records.
func usesRun(ctx context.Context, bin string, rate, uses int, dur time.Duration, every int, routine [][]byte) (usesResult, error) {
	env, err := openLatencyEnv(ctx, bin, "", "tokenwatch", rate)
	if err != nil {
		return usesResult{}, err
	}
	defer env.close()
	jtis, err := premint(ctx, env, 0, tokensFor(uses, dur))
	if err != nil {
		return usesResult{}, err
	}
	sent, ids, err := latencyLoad(ctx, env.f, env.live, rate, dur, every, routine, &usesMix{rate: uses, jtis: jtis})
	if err != nil {
		return usesResult{}, err
	}
	parts := byPrefix(ids, "lat-", "use-")
	settle(ctx, env, eventTokenRequest, parts["lat-"])
	settle(ctx, env, eventTokenUse, parts["use-"])
	r := usesResult{req: env.collect(parts["lat-"], sent, eventTokenRequest), use: env.collect(parts["use-"], sent, eventTokenUse)}
	r.lookback, _ = sumMetric(ctx, "http://"+env.metrics+"/metrics", "tokenwatch_agent_lineage_lookback_hits_total")
	if len(r.req.lat) == 0 || len(r.use.lat) == 0 {
		return r, fmt.Errorf("%d of %d alerts and %d of %d uses arrived\n%s",
			len(r.req.lat), len(parts["lat-"]), len(r.use.lat), len(parts["use-"]), env.tails())
	}
	return r, nil
}

// floodResult is one run of the flood figure.
type floodResult struct {
	calm, flood  latencyResult
	lines        int   // flood lines appended
	sent, counts int64 // the agent's uses sent one by one, and only counted
}

// floodRun measures token_request latency at rate lines/s with and
// without a flood of flood uses/s of one watched token, alternating every
// floodPeriod in one run.
func floodRun(ctx context.Context, bin string, rate, flood int, dur time.Duration, every int, routine [][]byte) (floodResult, error) {
	env, err := openLatencyEnv(ctx, bin, "", "tokenwatch", rate)
	if err != nil {
		return floodResult{}, err
	}
	defer env.close()
	jtis, err := premint(ctx, env, 1, 1)
	if err != nil {
		return floodResult{}, err
	}
	mix := &floodMix{rate: flood, jti: jtis[0]}
	sent, ids, err := latencyLoad(ctx, env.f, env.live, rate, dur, every, routine, mix)
	if err != nil {
		return floodResult{}, err
	}
	parts := byPrefix(ids, "lat-calm-", "lat-flood-")
	settle(ctx, env, eventTokenRequest, ids)
	r := floodResult{calm: env.collect(parts["lat-calm-"], sent, eventTokenRequest),
		flood: env.collect(parts["lat-flood-"], sent, eventTokenRequest), lines: mix.n}
	url := "http://" + env.metrics + "/metrics"
	r.sent, _ = sumMetric(ctx, url, "tokenwatch_agent_lineage_uses_sent_total")
	r.counts, _ = sumMetric(ctx, url, "tokenwatch_agent_lineage_uses_counted_total")
	if len(r.calm.lat) == 0 || len(r.flood.lat) == 0 {
		return r, fmt.Errorf("%d of %d calm and %d of %d flood alerts arrived\n%s",
			len(r.calm.lat), len(parts["lat-calm-"]), len(r.flood.lat), len(parts["lat-flood-"]), env.tails())
	}
	return r, nil
}

// verdict says whether p99 meets the 250 ms target.
func verdict(r latencyResult) string {
	if r.missing == 0 && pct(r.lat, 99) < 250*time.Millisecond {
		return "met"
	}
	return "**not met**"
}

// latencyRow formats n, p50, p99, max and missing of r.
func latencyRow(r latencyResult) string {
	return fmt.Sprintf("%d | %s | %s | %s | %d", len(r.lat), ms(pct(r.lat, 50)), ms(pct(r.lat, 99)), ms(r.lat[len(r.lat)-1]), r.missing)
}

// lineageLatency prints the two lineage tables for each rate.
func lineageLatency(ctx context.Context, out io.Writer, bin string, rates []int, uses, flood int, dur time.Duration, every int, routine [][]byte) error {
	if uses > 0 {
		fmt.Fprintf(out, "\n**token_use latency.** Same pipeline and writer, one run per rate: %d token creates by bench-attacker that issue a JTI are appended first and the run starts once each one's `tokenwatch.token_request` arrived and the agent holds the watches; then %d uses a second of those tokens (%d per token, each from a new source IP, so each brings `new_source_ip` and is sent at once) are appended with the routine lines, timestamped at append time. Latency: the write(2) → arrival of the use's `tokenwatch.token_use` record; the token_request row is the same run's alerts (its `tokenwatch.token_request` record).\n\n",
			tokensFor(uses, dur), uses, usesPerToken)
		fmt.Fprintln(out, "| rate (lines/s) | record | measured | p50 | p99 | max | missing | p99 < 250 ms |")
		fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|")
		for _, rate := range rates {
			r, err := usesRun(ctx, bin, rate, uses, dur, every, routine)
			if err != nil {
				return fmt.Errorf("token_use latency at %d lines/s: %w", rate, err)
			}
			fmt.Fprintf(out, "| %d | baseline: token_request | %s | %s |\n", rate, latencyRow(r.req), verdict(r.req))
			fmt.Fprintf(out, "| %d | token_use, %d uses/s (%d found by lookback) | %s | %s |\n", rate, uses, r.lookback, latencyRow(r.use), verdict(r.use))
		}
	}
	if flood > 0 {
		fmt.Fprintf(out, "\n**Token requests under a flood of uses.** Same pipeline and writer, one run per rate: a token minted first is used %d times a second (one use in four a `list secrets` denied with 403, the rest `get configmaps`, from %d source IPs, so the agent counts them instead of sending each) during every other %v of the run (calm, flood, calm, ...), on top of the routine lines; the alerts' token_request latency is reported by phase.\n\n",
			flood, len(floodIPs), floodPeriod)
		fmt.Fprintln(out, "| rate (lines/s) | phase | alerts measured | p50 | p99 | max | missing | p99 < 250 ms |")
		fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|")
		for _, rate := range rates {
			r, err := floodRun(ctx, bin, rate, flood, dur, every, routine)
			if err != nil {
				return fmt.Errorf("flood latency at %d lines/s: %w", rate, err)
			}
			fmt.Fprintf(out, "| %d | baseline: no flood | %s | %s |\n", rate, latencyRow(r.calm), verdict(r.calm))
			fmt.Fprintf(out, "| %d | flood: %d uses appended, agent sent %d one by one and counted %d | %s | %s |\n",
				rate, r.lines, r.sent, r.counts, latencyRow(r.flood), verdict(r.flood))
		}
	}
	return nil
}
