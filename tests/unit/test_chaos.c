/*
 * test_chaos.c -- the fault injector (core/chaos.h): SPEC parsing (every
 * key, the errors), the refusal on a production node (node { env }), the
 * rolls (probabilities 0 and 1, the crash gap, fills' no-ops, the end
 * after `for`) and their reproducibility from the seed.
 *
 * Chaos is process-wide: the tests run in order in one process and each
 * stops it when done.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <troupe/troupe.h>

#include "core/chaos.h"
#include "lua/tlua.h"
#include "tt.h"

static int parse(const char *s, tr_chaos_spec *sp, char *err)
{
	return tr_chaos_parse(s, sp, err, 256);
}

TT_TEST(parse_every_key)
{
	tr_chaos_spec sp;
	char err[256];
	TT_OK(parse("seed=42,crash=0.02:1s,slow=0.05:20ms,fail=0.02,fill=0.01,for=10s", &sp, err));
	TT_EQ(sp.seed, 42);
	TT_ASSERT(sp.crash == 0.02 && sp.slow == 0.05 && sp.fail == 0.02 && sp.fill == 0.01);
	TT_EQ(sp.crash_gap_us, 1000000);
	TT_EQ(sp.slow_us, 20000);
	TT_EQ(sp.for_us, 10000000);
	/* defaults: seed 1, no gap, no end */
	TT_OK(parse("crash=1", &sp, err));
	TT_EQ(sp.seed, 1);
	TT_ASSERT(sp.crash == 1.0 && sp.slow == 0 && sp.fail == 0 && sp.fill == 0);
	TT_EQ(sp.crash_gap_us, 0);
	TT_EQ(sp.for_us, 0);
	TT_OK(parse("fill=0,slow=.5:250us", &sp, err));
	TT_EQ(sp.slow_us, 250);
}

TT_TEST(parse_errors)
{
	static const struct {
		const char *spec, *err;
	} bad[] = {
		{"", "chaos: empty spec (e.g. seed=42,crash=0.02:1s,slow=0.05:20ms,fail=0.02,fill=0.01)"},
		{"seed=3", "chaos: no fault given (crash, slow, fail or fill)"},
		{"crash", "chaos: expected key=value, got 'crash'"},
		{"crash=0.1,,fail=0.1", "chaos: empty item (two commas, or a trailing comma)"},
		{"crash=0.1,", "chaos: empty item (two commas, or a trailing comma)"},
		{"crsh=0.1", "chaos: unknown key 'crsh' (expected seed, crash, slow, fail, fill or for)"},
		{"fail=0.1,fail=0.2", "chaos: fail is given twice"},
		{"crash=1.5", "chaos: crash: expected P or P:GAP (P from 0 to 1, GAP a duration like "
		              "500ms), got '1.5'"},
		{"crash=0.1:5", "chaos: crash: expected P or P:GAP (P from 0 to 1, GAP a duration like "
		                "500ms), got '0.1:5'"},
		{"slow=0.1", "chaos: slow: expected P:DELAY (P from 0 to 1, DELAY a duration like "
		             "20ms), got '0.1'"},
		{"slow=0.1:0ms", "chaos: slow: expected P:DELAY (P from 0 to 1, DELAY a duration like "
		                 "20ms), got '0.1:0ms'"},
		{"fail=inf", "chaos: fail: expected a probability from 0 to 1, got 'inf'"},
		{"fill=-0.1", "chaos: fill: expected a probability from 0 to 1, got '-0.1'"},
		{"fail=0.1:2", "chaos: fail: expected a probability from 0 to 1, got '0.1:2'"},
		{"seed=x1,crash=1", "chaos: seed: expected an unsigned integer, got 'x1'"},
		{"crash=1,for=2h", "chaos: for: expected a duration from 1us to 1h (e.g. 10s), got '2h'"},
		{"fail=0.6,slow=0.5:1ms", "chaos: slow + fail + fill is 1.1: they share each step "
		                          "attempt's roll and must add up to at most 1"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		tr_chaos_spec sp;
		char err[256] = "";
		TT_RC(parse(bad[i].spec, &sp, err), TR_EINVAL);
		TT_STREQ(err, bad[i].err);
	}
}

/* Loads a one-file config whose node has `env` (NULL: no env key). */
static tr_config *load_env(const char *env)
{
	char path[] = "/tmp/troupe-chaos-XXXXXX.lua";
	int fd = mkstemps(path, 4);
	if (fd < 0)
		return NULL;
	FILE *f = fdopen(fd, "w");
	fprintf(f, "node { name = \"n\"%s%s%s }\n", env ? ", env = \"" : "", env ? env : "",
	        env ? "\"" : "");
	fputs("actor \"a\" { receive = function(msg) return msg end }\n"
	      "pipeline \"p\" { step \"a\" {} }\n", f);
	fclose(f);
	const char *files[] = {path};
	tr_config *c = NULL;
	tr_diag d;
	tr_diag_init(&d);
	if (tr_config_load(files, 1, &c, &d) != TR_OK)
		c = NULL;
	tr_diag_free(&d);
	unlink(path);
	return c;
}

TT_TEST(refused_in_production)
{
	tr_chaos_spec sp;
	char err[256] = "";
	TT_OK(parse("crash=1", &sp, err));
	tr_config *prod = load_env("production");
	TT_ASSERT(prod != NULL);
	if (prod == NULL)
		return;
	TT_STREQ(prod->node.env, "production");
	TT_RC(tr_chaos_start(&sp, prod->node.env, err, sizeof(err)), TR_ESTATE);
	TT_STREQ(err, "--chaos is refused: this node is marked production "
	              "(node { env = \"production\" })");
	/* refused: nothing was turned on */
	TT_ASSERT(!tr__chaos_active());
	TT_ASSERT(tr_chaos_stats_of() == NULL);
	tr_config_free(prod);

	static const char *const ok[] = {"staging", "dev", "test", NULL};
	for (int i = 0; i < 4; i++) {
		tr_config *c = load_env(ok[i]);
		TT_ASSERT(c != NULL);
		if (c == NULL)
			continue;
		TT_ASSERT(ok[i] == NULL ? c->node.env == NULL : strcmp(c->node.env, ok[i]) == 0);
		TT_OK(tr_chaos_allowed(c->node.env, err, sizeof(err)));
		tr_config_free(c);
	}
}

TT_TEST(rolls)
{
	tr_chaos_spec sp;
	char err[256];
	uint64_t d = 0;

	/* certain crash, but only for actors that may crash; no-ops are dropped */
	TT_OK(parse("crash=1,fail=1", &sp, err));
	TT_OK(tr_chaos_start(&sp, "test", err, sizeof(err)));
	TT_ASSERT(tr__chaos_active() && tr_chaos_running());
	TT_EQ(tr__chaos_receive(0, 1, 7), TR__CHAOS_CRASH);
	TT_EQ(tr__chaos_receive(0, 0, 7), TR__CHAOS_PASS);
	TT_EQ(tr__chaos_receive(0, 0, TR__CHAOS_FILL_TAG), TR__CHAOS_SWALLOW);
	TT_EQ(tr__chaos_step(1, &d), TR__CHAOS_FAIL);
	TT_EQ(atomic_load(&tr_chaos_stats_of()->crashes), 1);
	TT_EQ(atomic_load(&tr_chaos_stats_of()->failures), 1);

	/* the gap: one crash, then none for 200 ms */
	TT_OK(parse("crash=1:200ms", &sp, err));
	TT_OK(tr_chaos_start(&sp, NULL, err, sizeof(err)));
	TT_EQ(atomic_load(&tr_chaos_stats_of()->crashes), 0); /* counters reset */
	TT_EQ(tr__chaos_receive(0, 1, 7), TR__CHAOS_CRASH);
	for (int i = 0; i < 100; i++)
		TT_EQ(tr__chaos_receive(i % 2, 1, 7), TR__CHAOS_PASS);
	usleep(250 * 1000);
	TT_EQ(tr__chaos_receive(1, 1, 7), TR__CHAOS_CRASH);

	/* slow gives its delay; fill is left to the caller */
	TT_OK(parse("slow=1:7ms", &sp, err));
	TT_OK(tr_chaos_start(&sp, NULL, err, sizeof(err)));
	TT_EQ(tr__chaos_step(0, &d), TR__CHAOS_SLOW);
	TT_EQ(d, 7000);
	TT_EQ(tr__chaos_receive(0, 1, 7), TR__CHAOS_PASS); /* no crash configured */
	TT_OK(parse("fill=1", &sp, err));
	TT_OK(tr_chaos_start(&sp, NULL, err, sizeof(err)));
	TT_EQ(tr__chaos_step(0, &d), TR__CHAOS_FILL);
	tr__chaos_filled(0); /* nothing queued: not a fill */
	tr__chaos_filled(5);
	TT_EQ(atomic_load(&tr_chaos_stats_of()->fills), 1);

	/* for: faults end by themselves; the poll reports the end once */
	TT_OK(parse("fail=1,for=50ms", &sp, err));
	TT_OK(tr_chaos_start(&sp, NULL, err, sizeof(err)));
	TT_EQ(tr__chaos_step(0, &d), TR__CHAOS_FAIL);
	TT_EQ(tr_chaos_poll(), 0);
	usleep(80 * 1000);
	TT_EQ(tr__chaos_step(0, &d), TR__CHAOS_NONE);
	TT_EQ(tr_chaos_poll(), 1);
	TT_EQ(tr_chaos_poll(), 0);
	TT_ASSERT(!tr_chaos_running());
	/* the hooks stay armed: earlier fills' no-ops are still dropped */
	TT_ASSERT(tr__chaos_active());
	TT_EQ(tr__chaos_receive(0, 1, TR__CHAOS_FILL_TAG), TR__CHAOS_SWALLOW);
	tr_chaos_stop();
}

/* The outcomes of n rolls of crash=0.3 / fail,slow,fill on worker w. */
static void sequence(uint64_t seed, unsigned w, char *out, int n)
{
	tr_chaos_spec sp;
	char err[256], spec[128];
	uint64_t d;
	snprintf(spec, sizeof(spec), "seed=%llu,crash=0.3,fail=0.1,slow=0.1:1ms,fill=0.1",
	         (unsigned long long)seed);
	if (tr_chaos_parse(spec, &sp, err, sizeof(err)) != TR_OK ||
	    tr_chaos_start(&sp, NULL, err, sizeof(err)) != TR_OK)
		return;
	for (int i = 0; i < n; i++)
		out[i] = (char)('0' + (i % 2 ? tr__chaos_step(w, &d) : tr__chaos_receive(w, 1, 7)));
	out[n] = '\0';
	tr_chaos_stop();
}

TT_TEST(same_seed_same_faults)
{
	char a[401], b[401], c[401], e[401];
	sequence(42, 0, a, 400);
	sequence(42, 0, b, 400);
	sequence(43, 0, c, 400);
	sequence(42, 1, e, 400);
	TT_STREQ(a, b);
	TT_ASSERT(strcmp(a, c) != 0); /* another seed, other faults */
	TT_ASSERT(strcmp(a, e) != 0); /* each worker has a stream of its own */
	/* about the configured rates: 30 % of 200 crash rolls, 30 % of 200 step rolls */
	int crashes = 0, steps = 0;
	for (int i = 0; i < 400; i++) {
		crashes += i % 2 == 0 && a[i] == '0' + TR__CHAOS_CRASH;
		steps += i % 2 == 1 && a[i] != '0' + TR__CHAOS_NONE;
	}
	TT_ASSERT(crashes > 30 && crashes < 90);
	TT_ASSERT(steps > 30 && steps < 90);
}

TT_LIST = {
	TT_ENTRY(parse_every_key),
	TT_ENTRY(parse_errors),
	TT_ENTRY(refused_in_production),
	TT_ENTRY(rolls),
	TT_ENTRY(same_seed_same_faults),
	TT_END,
};

TT_MAIN()
