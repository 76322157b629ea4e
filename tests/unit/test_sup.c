/*
 * test_sup.c -- supervision: each strategy, restart types, restart
 * intensity and its escalation to the parent, restart backoff, pending
 * asks answered when a child crashes, and walking the tree.
 */
#include "tt.h"
#include "tnode.h"

enum { CRASH = 1, QUIT };

/* Children crash with reason `arg` on CRASH and stop normally on QUIT. */
static int child_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == CRASH)
		return (int)(int64_t)m->arg;
	if (m->tag == QUIT)
		tr_stop(ctx, TR_OK);
	return TR_OK;
}

static probe_cfg kid_cfg = {.id = 1, .on_msg = child_msg};

static tr_child_spec kids3(const char *name, tr_restart r)
{
	tr_child_spec c = {0};
	c.name = name;
	c.ops = &probe_ops;
	c.arg = &kid_cfg;
	c.restart = r;
	return c;
}

struct refwait {
	tr_node *n;
	tr_ref sup;
	const char *name;
	tr_ref old;
};

static int changed(void *ud)
{
	struct refwait *w = ud;
	tr_ref r;
	return tr_sup_child(w->n, w->sup, w->name, &r) == TR_OK && !tr_ref_eq(r, w->old);
}

static tr_ref child(tr_node *n, tr_ref sup, const char *name)
{
	tr_ref r = TR_REF_NONE;
	(void)tr_sup_child(n, sup, name, &r);
	return r;
}

static int start_sup(tr_node *n, tr_sup_spec *spec, tr_ref *out)
{
	tr_spawn_opts o = {0};
	o.name = "root";
	return tr_node_spawn(n, &tr_sup_ops, spec, &o, out);
}

static int crash(tr_node *n, tr_ref r, int reason)
{
	return tn_send(n, r, CRASH, (uint64_t)(int64_t)reason);
}

TT_TEST(one_for_one)
{
	tr_node *n = tn_start(2);
	tr_child_spec cs[3] = {kids3("a", TR_PERMANENT), kids3("b", TR_PERMANENT),
	                       kids3("c", TR_PERMANENT)};
	tr_sup_spec spec = {.strategy = TR_ONE_FOR_ONE, .max_restarts = 5, .within_ms = 1000,
	                    .children = cs, .nchildren = 3};
	tr_ref s;
	TT_OK(start_sup(n, &spec, &s));
	tr_ref a = child(n, s, "a"), b = child(n, s, "b"), c = child(n, s, "c");
	TT_ASSERT(!tr_ref_is_none(a) && !tr_ref_is_none(b) && !tr_ref_is_none(c));
	tr_ref w;
	TT_OK(tr_whereis(n, "b", &w)); /* children are registered by name */
	TT_ASSERT(tr_ref_eq(w, b));
	TT_OK(crash(n, b, TR_EFAILED));
	struct refwait rw = {n, s, "b", b};
	TT_ASSERT(tn_wait(changed, &rw, 5000));
	TT_ASSERT(tr_ref_eq(child(n, s, "a"), a));
	TT_ASSERT(tr_ref_eq(child(n, s, "c"), c));
	TT_OK(tr_whereis(n, "b", &w));
	TT_ASSERT(tr_ref_eq(w, child(n, s, "b"))); /* the name follows */
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, child(n, s, "b"), &st));
	TT_EQ(st.restarts, 1);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(one_for_all)
{
	tr_node *n = tn_start(2);
	tr_child_spec cs[3] = {kids3("a", TR_PERMANENT), kids3("b", TR_PERMANENT),
	                       kids3("c", TR_PERMANENT)};
	tr_sup_spec spec = {.strategy = TR_ONE_FOR_ALL, .max_restarts = 5, .within_ms = 1000,
	                    .children = cs, .nchildren = 3};
	tr_ref s;
	TT_OK(start_sup(n, &spec, &s));
	tr_ref a = child(n, s, "a"), b = child(n, s, "b"), c = child(n, s, "c");
	TT_OK(crash(n, b, TR_EFAILED));
	struct refwait ra = {n, s, "a", a}, rb = {n, s, "b", b}, rc = {n, s, "c", c};
	TT_ASSERT(tn_wait(changed, &ra, 5000));
	TT_ASSERT(tn_wait(changed, &rb, 5000));
	TT_ASSERT(tn_wait(changed, &rc, 5000));
	/* The old incarnations are all gone. */
	tr_actor_stats st;
	TT_RC(tr_actor_stats_get(n, a, &st), TR_ENOACTOR);
	TT_RC(tr_actor_stats_get(n, c, &st), TR_ENOACTOR);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(rest_for_one)
{
	tr_node *n = tn_start(2);
	tr_child_spec cs[3] = {kids3("a", TR_PERMANENT), kids3("b", TR_PERMANENT),
	                       kids3("c", TR_PERMANENT)};
	tr_sup_spec spec = {.strategy = TR_REST_FOR_ONE, .max_restarts = 5, .within_ms = 1000,
	                    .children = cs, .nchildren = 3};
	tr_ref s;
	TT_OK(start_sup(n, &spec, &s));
	tr_ref a = child(n, s, "a"), b = child(n, s, "b"), c = child(n, s, "c");
	TT_OK(crash(n, b, TR_EFAILED));
	struct refwait rb = {n, s, "b", b}, rc = {n, s, "c", c};
	TT_ASSERT(tn_wait(changed, &rb, 5000));
	TT_ASSERT(tn_wait(changed, &rc, 5000));
	tn_sleep_ms(20);
	TT_ASSERT(tr_ref_eq(child(n, s, "a"), a)); /* before b: untouched */
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(restart_types)
{
	tr_node *n = tn_start(1);
	tr_child_spec cs[3] = {kids3("perm", TR_PERMANENT), kids3("trans", TR_TRANSIENT),
	                       kids3("temp", TR_TEMPORARY)};
	tr_sup_spec spec = {.strategy = TR_ONE_FOR_ONE, .max_restarts = 10, .within_ms = 1000,
	                    .children = cs, .nchildren = 3};
	tr_ref s;
	TT_OK(start_sup(n, &spec, &s));
	/* transient: a normal exit stays down, a crash is restarted */
	tr_ref t = child(n, s, "trans");
	TT_OK(tn_send(n, t, QUIT, 0));
	tn_sleep_ms(100);
	tr_ref r;
	TT_RC(tr_sup_child(n, s, "trans", &r), TR_ENOTFOUND);
	/* temporary: never restarted, even after a crash */
	TT_OK(crash(n, child(n, s, "temp"), TR_EFAILED));
	tn_sleep_ms(100);
	TT_RC(tr_sup_child(n, s, "temp", &r), TR_ENOTFOUND);
	/* permanent: even a normal exit is restarted */
	tr_ref p = child(n, s, "perm");
	TT_OK(tn_send(n, p, QUIT, 0));
	struct refwait rp = {n, s, "perm", p};
	TT_ASSERT(tn_wait(changed, &rp, 5000));
	TT_EQ(tn_stop(n), 0);
}

struct deadwait {
	tr_node *n;
	tr_ref r;
};

static int is_dead(void *ud)
{
	struct deadwait *d = ud;
	tr_actor_stats st;
	return tr_actor_stats_get(d->n, d->r, &st) == TR_ENOACTOR;
}

TT_TEST(intensity_escalates_to_parent)
{
	tr_node *n = tn_start(2);
	tr_child_spec leaf[1] = {kids3("leaf", TR_PERMANENT)};
	tr_sup_spec inner = {.strategy = TR_ONE_FOR_ONE, .max_restarts = 2, .within_ms = 5000,
	                     .children = leaf, .nchildren = 1};
	tr_child_spec top[2] = {kids3("sibling", TR_PERMANENT), {0}};
	top[1].name = "inner";
	top[1].ops = &tr_sup_ops;
	top[1].arg = &inner;
	top[1].restart = TR_PERMANENT;
	tr_sup_spec outer = {.strategy = TR_ONE_FOR_ONE, .max_restarts = 5, .within_ms = 5000,
	                     .children = top, .nchildren = 2};
	tr_ref s;
	TT_OK(start_sup(n, &outer, &s));
	tr_ref in = child(n, s, "inner");
	TT_ASSERT(!tr_ref_is_none(in));
	tr_ref sib = child(n, s, "sibling");
	/* Three crashes in a row: two restarts allowed, the third gives up. */
	for (int i = 0; i < 3; i++) {
		tr_ref l = child(n, in, "leaf");
		TT_ASSERT(!tr_ref_is_none(l));
		TT_OK(crash(n, l, TR_EFAILED));
		if (i < 2) {
			struct refwait rw = {n, in, "leaf", l};
			TT_ASSERT(tn_wait(changed, &rw, 5000));
		}
	}
	struct deadwait d = {n, in};
	TT_ASSERT(tn_wait(is_dead, &d, 5000)); /* inner gave up */
	struct refwait ri = {n, s, "inner", in};
	TT_ASSERT(tn_wait(changed, &ri, 5000)); /* and outer restarted it */
	tr_ref in2 = child(n, s, "inner");
	tr_ref l2 = TR_REF_NONE;
	for (int i = 0; i < 100 && tr_sup_child(n, in2, "leaf", &l2) != TR_OK; i++)
		tn_sleep_ms(5);
	TT_ASSERT(!tr_ref_is_none(l2)); /* with a fresh leaf */
	TT_ASSERT(tr_ref_eq(child(n, s, "sibling"), sib)); /* one_for_one above */
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, in2, &st));
	TT_EQ(st.restarts, 1);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(root_gives_up)
{
	tr_node *n = tn_start(1);
	tr_child_spec cs[1] = {kids3("a", TR_PERMANENT)};
	tr_sup_spec spec = {.strategy = TR_ONE_FOR_ONE, .max_restarts = 1, .within_ms = 5000,
	                    .children = cs, .nchildren = 1};
	tr_ref s;
	TT_OK(start_sup(n, &spec, &s));
	tr_ref a = child(n, s, "a");
	TT_OK(crash(n, a, TR_EFAILED));
	struct refwait rw = {n, s, "a", a};
	TT_ASSERT(tn_wait(changed, &rw, 5000));
	TT_OK(crash(n, child(n, s, "a"), TR_EFAILED));
	struct deadwait d = {n, s};
	TT_ASSERT(tn_wait(is_dead, &d, 5000));
	tn_sleep_ms(50);
	tr_node_stats ns;
	tr_node_stats_get(n, &ns);
	TT_EQ(ns.actors, 0); /* its children went with it */
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(restart_backoff)
{
	tr_node *n = tn_start(1);
	tr_child_spec cs[1] = {kids3("a", TR_PERMANENT)};
	tr_sup_spec spec = {.strategy = TR_ONE_FOR_ONE, .max_restarts = 10, .within_ms = 10000,
	                    .backoff_base_ms = 40, .backoff_max_ms = 200,
	                    .children = cs, .nchildren = 1};
	tr_ref s;
	TT_OK(start_sup(n, &spec, &s));
	uint64_t gaps[3];
	for (int i = 0; i < 3; i++) {
		tr_ref a = child(n, s, "a");
		uint64_t t0 = tr_now_ns();
		TT_OK(crash(n, a, TR_EFAILED));
		struct refwait rw = {n, s, "a", a};
		TT_ASSERT(tn_wait(changed, &rw, 5000));
		gaps[i] = (tr_now_ns() - t0) / 1000000u;
	}
	/* 40, 80, 160 ms: each at least its backoff */
	TT_LE(40, gaps[0]);
	TT_LE(80, gaps[1]);
	TT_LE(160, gaps[2]);
	TT_EQ(tn_stop(n), 0);
}

struct walk_acc {
	int n, sups, maxdepth;
	char names[16][80];
};

static int walk_fn(void *ud, unsigned depth, const tr_actor_stats *st, int is_sup)
{
	struct walk_acc *w = ud;
	if (w->n < 16)
		snprintf(w->names[w->n], sizeof(w->names[0]), "%u:%s", depth, st->name);
	w->n++;
	w->sups += is_sup;
	if ((int)depth > w->maxdepth)
		w->maxdepth = (int)depth;
	return 0;
}

TT_TEST(walk_tree)
{
	tr_node *n = tn_start(2);
	tr_child_spec leaf[2] = {kids3("x", TR_PERMANENT), kids3("y", TR_PERMANENT)};
	tr_sup_spec inner = {.strategy = TR_ONE_FOR_ONE, .children = leaf, .nchildren = 2};
	tr_child_spec top[2] = {kids3("a", TR_PERMANENT), {0}};
	top[1].name = "inner";
	top[1].ops = &tr_sup_ops;
	top[1].arg = &inner;
	tr_sup_spec outer = {.strategy = TR_ONE_FOR_ONE, .children = top, .nchildren = 2};
	tr_ref s;
	TT_OK(start_sup(n, &outer, &s));
	struct walk_acc w;
	memset(&w, 0, sizeof(w));
	TT_EQ(tr_node_walk(n, walk_fn, &w), 0);
	TT_EQ(w.n, 5);
	TT_EQ(w.sups, 2);
	TT_EQ(w.maxdepth, 2);
	TT_STREQ(w.names[0], "0:root");
	TT_STREQ(w.names[1], "1:a");
	TT_STREQ(w.names[2], "1:inner");
	TT_STREQ(w.names[3], "2:x");
	TT_STREQ(w.names[4], "2:y");
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(bad_specs_rejected)
{
	tr_node *n = tn_start(1);
	tr_child_spec dup[2] = {kids3("a", TR_PERMANENT), kids3("a", TR_PERMANENT)};
	tr_sup_spec spec = {.children = dup, .nchildren = 2};
	tr_ref s;
	TT_RC(start_sup(n, &spec, &s), TR_EINVAL);
	probe_cfg bad = {.id = 1, .init_rc = TR_EIO};
	tr_child_spec failing[2] = {kids3("ok", TR_PERMANENT), kids3("bad", TR_PERMANENT)};
	failing[1].arg = &bad;
	tr_sup_spec spec2 = {.children = failing, .nchildren = 2};
	TT_RC(start_sup(n, &spec2, &s), TR_EIO);
	tn_sleep_ms(50);
	tr_node_stats ns;
	tr_node_stats_get(n, &ns);
	TT_EQ(ns.actors, 0); /* the child that did start was stopped */
	TT_EQ(tn_stop(n), 0);
}

TT_LIST = {
	TT_ENTRY(one_for_one),
	TT_ENTRY(one_for_all),
	TT_ENTRY(rest_for_one),
	TT_ENTRY(restart_types),
	TT_ENTRY(intensity_escalates_to_parent),
	TT_ENTRY(root_gives_up),
	TT_ENTRY(restart_backoff),
	TT_ENTRY(walk_tree),
	TT_ENTRY(bad_specs_rejected),
	TT_END,
};

TT_MAIN()
