/*
 * core/chaos.c -- the test-only fault injector (see chaos.h for SPEC and
 * what it touches). The hooks it serves sit in sched/actor.c (dispatch:
 * crashes, fills' no-ops) and pipe/engine.c (attempt_at: delays,
 * failures, fills); each is behind tr__chaos_active().
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <troupe/troupe.h>

#include "core/chaos.h"

#define MAX_WORKERS 64 /* TR_MAX_WORKERS (sched/sched.h) */
#define MAX_MARKS 256

atomic_bool tr__chaos_on;
static atomic_bool faults;             /* faults are injected now */

static tr_chaos_spec spec;             /* written by tr_chaos_start before the flag */
static uint64_t thr_crash, thr_slow, thr_fail, thr_fill; /* P scaled to 2^64 */
static uint64_t end_ns;                /* 0 = no end */
static atomic_uint epoch;              /* bumped by each start: streams reseed */
static atomic_uint_fast64_t last_crash_ns;
static tr_chaos_stats stats;
static atomic_bool started;

static _Atomic(const void *) marks[MAX_MARKS];
static atomic_uint nmarks;

/* One stream per worker, written only by that worker. */
static struct {
	_Alignas(64) uint64_t s;
	unsigned epoch;
} rng[MAX_WORKERS];

/* ---- parsing ------------------------------------------------------- */

static int parse_prob(const char *s, size_t n, double *out)
{
	char buf[32], *end;
	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n);
	buf[n] = '\0';
	/* Digits and one dot only: strtod would take "inf", "0x1p-3", " 1". */
	for (size_t i = 0; i < n; i++)
		if (!((buf[i] >= '0' && buf[i] <= '9') || buf[i] == '.'))
			return -1;
	errno = 0;
	double v = strtod(buf, &end);
	if (errno != 0 || *end != '\0' || v < 0 || v > 1)
		return -1;
	*out = v;
	return 0;
}

/* "20ms", "1s", "500us": a positive integer and a unit, at most 1 h. */
static int parse_dur(const char *s, size_t n, uint64_t *out_us)
{
	uint64_t v = 0;
	size_t i = 0;
	while (i < n && s[i] >= '0' && s[i] <= '9') {
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > 3600000000ull)
			return -1;
		i++;
	}
	if (i == 0)
		return -1;
	const char *u = s + i;
	size_t un = n - i;
	uint64_t mul;
	if (un == 2 && memcmp(u, "us", 2) == 0)
		mul = 1;
	else if (un == 2 && memcmp(u, "ms", 2) == 0)
		mul = 1000;
	else if (un == 1 && u[0] == 's')
		mul = 1000000;
	else
		return -1;
	v *= mul;
	if (v == 0 || v > 3600000000ull)
		return -1;
	*out_us = v;
	return 0;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0 || n > 20)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

int tr_chaos_parse(const char *s, tr_chaos_spec *out, char *err, size_t errlen)
{
	static const char *const keys[] = {"seed", "crash", "slow", "fail", "fill", "for"};
	unsigned seen = 0, faults = 0;
	tr_chaos_spec sp;

	memset(&sp, 0, sizeof(sp));
	sp.seed = 1;
	if (s == NULL || *s == '\0') {
		snprintf(err, errlen, "chaos: empty spec (e.g. seed=42,crash=0.02:1s,slow=0.05:20ms,"
		                      "fail=0.02,fill=0.01)");
		return TR_EINVAL;
	}
	while (*s != '\0') {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);
		const char *eq = memchr(s, '=', len);
		if (len == 0) {
			snprintf(err, errlen, "chaos: empty item (two commas, or a trailing comma)");
			return TR_EINVAL;
		}
		if (eq == NULL) {
			snprintf(err, errlen, "chaos: expected key=value, got '%.*s'", (int)len, s);
			return TR_EINVAL;
		}
		size_t kn = (size_t)(eq - s), vn = len - kn - 1;
		const char *v = eq + 1;
		int k = -1;
		for (int i = 0; i < 6; i++)
			if (strlen(keys[i]) == kn && memcmp(keys[i], s, kn) == 0)
				k = i;
		if (k < 0) {
			snprintf(err, errlen,
			         "chaos: unknown key '%.*s' (expected seed, crash, slow, fail, fill or for)",
			         (int)kn, s);
			return TR_EINVAL;
		}
		if (seen & (1u << k)) {
			snprintf(err, errlen, "chaos: %s is given twice", keys[k]);
			return TR_EINVAL;
		}
		seen |= 1u << k;
		const char *c = memchr(v, ':', vn); /* P:ARG */
		size_t pn = c ? (size_t)(c - v) : vn;
		int bad = 0;
		switch (k) {
		case 0:
			bad = parse_u64(v, vn, &sp.seed);
			if (bad)
				snprintf(err, errlen, "chaos: seed: expected an unsigned integer, got '%.*s'",
				         (int)vn, v);
			break;
		case 1:
			bad = parse_prob(v, pn, &sp.crash) ||
			      (c != NULL && parse_dur(c + 1, vn - pn - 1, &sp.crash_gap_us));
			if (bad)
				snprintf(err, errlen,
				         "chaos: crash: expected P or P:GAP (P from 0 to 1, GAP a duration "
				         "like 500ms), got '%.*s'", (int)vn, v);
			faults++;
			break;
		case 2:
			bad = c == NULL || parse_prob(v, pn, &sp.slow) ||
			      parse_dur(c + 1, vn - pn - 1, &sp.slow_us);
			if (bad)
				snprintf(err, errlen,
				         "chaos: slow: expected P:DELAY (P from 0 to 1, DELAY a duration "
				         "like 20ms), got '%.*s'", (int)vn, v);
			faults++;
			break;
		case 3:
		case 4:
			bad = c != NULL || parse_prob(v, vn, k == 3 ? &sp.fail : &sp.fill);
			if (bad)
				snprintf(err, errlen, "chaos: %s: expected a probability from 0 to 1, got '%.*s'",
				         keys[k], (int)vn, v);
			faults++;
			break;
		default:
			bad = parse_dur(v, vn, &sp.for_us);
			if (bad)
				snprintf(err, errlen,
				         "chaos: for: expected a duration from 1us to 1h (e.g. 10s), got '%.*s'",
				         (int)vn, v);
			break;
		}
		if (bad)
			return TR_EINVAL;
		s += len;
		if (*s == ',') {
			s++;
			if (*s == '\0') {
				snprintf(err, errlen, "chaos: empty item (two commas, or a trailing comma)");
				return TR_EINVAL;
			}
		}
	}
	if (faults == 0) {
		snprintf(err, errlen, "chaos: no fault given (crash, slow, fail or fill)");
		return TR_EINVAL;
	}
	if (sp.slow + sp.fail + sp.fill > 1.0) {
		snprintf(err, errlen, "chaos: slow + fail + fill is %.3g: they share each step "
		                      "attempt's roll and must add up to at most 1",
		         sp.slow + sp.fail + sp.fill);
		return TR_EINVAL;
	}
	*out = sp;
	return TR_OK;
}

/* ---- on and off ---------------------------------------------------- */

int tr_chaos_allowed(const char *env, char *err, size_t errlen)
{
	if (env != NULL && strcmp(env, "production") == 0) {
		snprintf(err, errlen, "--chaos is refused: this node is marked production "
		                      "(node { env = \"production\" })");
		return TR_ESTATE;
	}
	return TR_OK;
}

/* p in [0, 1] as a threshold on a uniform 64-bit draw. */
static uint64_t threshold(double p)
{
	if (p >= 1.0)
		return UINT64_MAX;
	return (uint64_t)(p * 18446744073709551616.0);
}

int tr_chaos_start(const tr_chaos_spec *sp, const char *env, char *err, size_t errlen)
{
	int rc = tr_chaos_allowed(env, err, errlen);
	if (rc != TR_OK)
		return rc;
	atomic_store(&faults, 0);
	spec = *sp;
	thr_crash = threshold(sp->crash);
	thr_slow = threshold(sp->slow);
	/* One roll per attempt: [0, fail) fails, [fail, fail+slow) slows,
	 * then fill (tr__chaos_step). */
	thr_fail = threshold(sp->fail);
	thr_fill = threshold(sp->fill);
	end_ns = sp->for_us ? tr_now_ns() + sp->for_us * 1000u : 0;
	atomic_store(&last_crash_ns, 0);
	atomic_store(&stats.crashes, 0);
	atomic_store(&stats.delays, 0);
	atomic_store(&stats.failures, 0);
	atomic_store(&stats.fills, 0);
	atomic_fetch_add(&epoch, 1);
	atomic_store(&started, 1);
	/* seq_cst stores after the plain writes above: a worker that sees a
	 * flag reads the spec written before it (x86 keeps stores in order
	 * even for the hooks' relaxed loads; in `troupe run` the workers
	 * start after this anyway). */
	atomic_store(&faults, 1);
	atomic_store(&tr__chaos_on, 1);
	return TR_OK;
}

void tr_chaos_stop(void)
{
	/* tr__chaos_on stays set: fills queued before still need dropping. */
	atomic_store(&faults, 0);
}

int tr_chaos_running(void)
{
	return atomic_load_explicit(&faults, memory_order_relaxed);
}

int tr_chaos_poll(void)
{
	if (!atomic_load(&faults) || end_ns == 0 || tr_now_ns() < end_ns)
		return 0;
	/* Whoever flips it reports it, once. (The hooks stop at end_ns on
	 * their own, so the 100 ms between two polls cost no precision.) */
	bool on = 1;
	return atomic_compare_exchange_strong(&faults, &on, 0);
}

const tr_chaos_stats *tr_chaos_stats_of(void)
{
	return atomic_load(&started) ? &stats : NULL;
}

void tr__chaos_mark(const void *ops)
{
	if (tr__chaos_marked(ops))
		return;
	unsigned i = atomic_fetch_add(&nmarks, 1);
	if (i < MAX_MARKS)
		atomic_store(&marks[i], ops);
}

int tr__chaos_marked(const void *ops)
{
	unsigned n = atomic_load(&nmarks);
	if (n > MAX_MARKS)
		n = MAX_MARKS;
	for (unsigned i = 0; i < n; i++)
		if (atomic_load_explicit(&marks[i], memory_order_relaxed) == ops)
			return 1;
	return 0;
}

/* ---- rolls --------------------------------------------------------- */

static uint64_t splitmix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static uint64_t roll(unsigned w)
{
	if (w >= MAX_WORKERS)
		w = MAX_WORKERS - 1;
	unsigned ep = atomic_load_explicit(&epoch, memory_order_relaxed);
	if (rng[w].epoch != ep) {
		rng[w].epoch = ep;
		rng[w].s = splitmix(spec.seed ^ ((uint64_t)(w + 1) << 32)) | 1u;
	}
	/* xorshift64* (as core/util.h's tr__xorshift) */
	uint64_t x = rng[w].s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng[w].s = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* Whether faults go on: off after tr_chaos_stop, or once `for` passed
 * (the control thread's tr_chaos_poll turns the flag off and logs it). */
static int still_on(void)
{
	if (!atomic_load_explicit(&faults, memory_order_relaxed))
		return 0;
	return end_ns == 0 || tr_now_ns() < end_ns;
}

int tr__chaos_receive(unsigned w, int eligible, uint32_t tag)
{
	if (tag == TR__CHAOS_FILL_TAG)
		return TR__CHAOS_SWALLOW;
	if (!eligible || thr_crash == 0 || roll(w) >= thr_crash || !still_on())
		return TR__CHAOS_PASS;
	if (spec.crash_gap_us != 0) {
		/* One winner per gap: the CAS claims it. */
		uint64_t now = tr_now_ns(), last = atomic_load(&last_crash_ns);
		if (last != 0 && now - last < spec.crash_gap_us * 1000u)
			return TR__CHAOS_PASS;
		if (!atomic_compare_exchange_strong(&last_crash_ns, &last, now))
			return TR__CHAOS_PASS;
	}
	atomic_fetch_add_explicit(&stats.crashes, 1, memory_order_relaxed);
	return TR__CHAOS_CRASH;
}

int tr__chaos_step(unsigned w, uint64_t *delay_us)
{
	if (thr_fail == 0 && thr_slow == 0 && thr_fill == 0)
		return TR__CHAOS_NONE;
	uint64_t r = roll(w);
	/* Bands of one roll: [0, fail) [fail, +slow) [+slow, +fill). The
	 * parser keeps the sum at most 1; saturate anyway. */
	uint64_t b1 = thr_fail, b2 = b1 + thr_slow < b1 ? UINT64_MAX : b1 + thr_slow;
	uint64_t b3 = b2 + thr_fill < b2 ? UINT64_MAX : b2 + thr_fill;
	if (r >= b3 || !still_on())
		return TR__CHAOS_NONE;
	if (r < b1) {
		atomic_fetch_add_explicit(&stats.failures, 1, memory_order_relaxed);
		return TR__CHAOS_FAIL;
	}
	if (r < b2) {
		atomic_fetch_add_explicit(&stats.delays, 1, memory_order_relaxed);
		*delay_us = spec.slow_us;
		return TR__CHAOS_SLOW;
	}
	return TR__CHAOS_FILL;
}

void tr__chaos_filled(uint32_t added)
{
	if (added > 0)
		atomic_fetch_add_explicit(&stats.fills, 1, memory_order_relaxed);
}
