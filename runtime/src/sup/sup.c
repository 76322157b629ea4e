/*
 * sup/sup.c -- supervisors (see troupe/sup.h for the contract).
 *
 * A supervisor is an ordinary actor that traps exits and links to its
 * children. Group restarts (one_for_all, rest_for_one) are done in two
 * phases, as OTP does: first every affected sibling is asked to stop and
 * the supervisor waits for each one's EXIT, then the group is started
 * again in order. Starting before the old incarnations are gone would
 * race them for their registered names.
 *
 * The node keeps a list of live supervisors (under node->tree_mu) so the
 * tree can be walked from any thread; the child table's refs are written
 * under the same mutex.
 */
#include <string.h>

#include "sched/sched.h"

#define TAG_RESTART 1u

struct tr__sup_link {
	tr__sup_link *next;
	tr_ref self;
	struct sup *s;
};

typedef struct child {
	tr_child_spec spec;
	char name[64];
	tr_ref ref;          /* current incarnation; none while down */
	uint32_t restarts;   /* total restarts of this child */
	uint8_t stopping;    /* we asked it to stop; its EXIT is awaited */
	uint8_t pending;     /* to be (re)started when the group is down */
} child;

typedef struct sup {
	tr__sup_link link;
	tr_sup_spec spec;
	child *kids;
	uint32_t nkids;
	uint64_t *times;     /* ring of recent restart times (ms), max_restarts+1 */
	uint32_t ntimes, thead;
	uint32_t awaiting;   /* EXITs still expected from children we stopped */
	uint32_t streak;     /* restarts in a row within the window, for backoff */
	uint64_t last_restart_ms;
	uint64_t restart_timer;
	tr_ref self;
} sup;

static uint64_t now_ms(void)
{
	return tr_now_ns() / 1000000u;
}

static void set_ref(tr_node *n, child *c, tr_ref r)
{
	uv_mutex_lock(&n->tree_mu);
	c->ref = r;
	uv_mutex_unlock(&n->tree_mu);
}

static int start_child(tr_ctx *ctx, sup *s, child *c)
{
	tr_spawn_opts o;
	memset(&o, 0, sizeof(o));
	o.name = c->name;
	o.mbox = c->spec.mbox;
	o.link = 1;
	tr_ref r;
	int rc = tr_spawn(ctx, c->spec.ops, c->spec.arg, &o, &r);
	if (rc != TR_OK)
		return rc;
	set_ref(tr_ctx_node(ctx), c, r);
	if (c->restarts > 0) {
		tr_actor *a = tr__actor_lock_ref(tr_ctx_node(ctx), r);
		if (a != NULL) {
			a->restarts = c->restarts;
			tr__spin_unlock(&a->lock);
		}
	}
	(void)s;
	return TR_OK;
}

/* Asks a running child to stop; its EXIT will arrive later. */
static void stop_child(tr_ctx *ctx, sup *s, child *c)
{
	if (tr_ref_is_none(c->ref) || c->stopping)
		return;
	c->stopping = 1;
	s->awaiting++;
	(void)tr__send_sys(tr_ctx_node(ctx), tr_self(ctx), c->ref, TR_TAG_STOP, TR_ESHUTDOWN, 0, 0, 0);
}

/* Records one restart; returns 0 when the intensity is exceeded. */
static int note_restart(sup *s)
{
	uint64_t t = now_ms();
	uint32_t cap = s->spec.max_restarts + 1;
	s->times[s->thead] = t;
	s->thead = (s->thead + 1) % cap;
	if (s->ntimes < cap)
		s->ntimes++;
	uint32_t recent = 0;
	for (uint32_t i = 0; i < s->ntimes; i++)
		if (t - s->times[i] <= s->spec.within_ms)
			recent++;
	if (t - s->last_restart_ms <= s->spec.within_ms)
		s->streak++;
	else
		s->streak = 1;
	s->last_restart_ms = t;
	return recent <= s->spec.max_restarts;
}

static uint64_t backoff_ms(sup *s)
{
	if (s->spec.backoff_base_ms == 0)
		return 0;
	uint64_t d = s->spec.backoff_base_ms;
	for (uint32_t i = 1; i < s->streak && d < s->spec.backoff_max_ms; i++)
		d *= 2;
	return d < s->spec.backoff_max_ms ? d : s->spec.backoff_max_ms;
}

static void give_up(tr_ctx *ctx, sup *s)
{
	for (uint32_t i = s->nkids; i-- > 0;)
		stop_child(ctx, s, &s->kids[i]);
	tr_stop(ctx, TR_EINTENSITY);
}

static int start_pending(tr_ctx *ctx, sup *s);

/* The group marked `pending` is down: start it after the backoff. */
static int restart_group(tr_ctx *ctx, sup *s)
{
	if (atomic_load(&tr_ctx_node(ctx)->stopping))
		return TR_OK;
	uint64_t d = backoff_ms(s);
	if (d == 0)
		return start_pending(ctx, s);
	if (s->restart_timer != 0)
		return TR_OK; /* one is already due; it starts everything pending */
	return tr_timer_after(ctx, TAG_RESTART, d, &s->restart_timer);
}

static int start_pending(tr_ctx *ctx, sup *s)
{
	for (uint32_t i = 0; i < s->nkids; i++) {
		child *c = &s->kids[i];
		if (!c->pending)
			continue;
		c->restarts++;
		int rc = start_child(ctx, s, c);
		if (rc == TR_OK) {
			c->pending = 0;
			continue;
		}
		/* A failed restart counts against the intensity, and is retried
		 * after the backoff. */
		if (!note_restart(s)) {
			give_up(ctx, s);
			return TR_OK;
		}
		return restart_group(ctx, s);
	}
	return TR_OK;
}

static int wants_restart(const child *c, int reason)
{
	switch (c->spec.restart) {
	case TR_PERMANENT:
		return 1;
	case TR_TRANSIENT:
		return reason != TR_OK && reason != TR_ESHUTDOWN;
	default:
		return 0;
	}
}

static int on_child_exit(tr_ctx *ctx, sup *s, uint32_t i, int reason)
{
	child *c = &s->kids[i];
	set_ref(tr_ctx_node(ctx), c, TR_REF_NONE);
	if (c->stopping) {
		/* One we stopped ourselves for a group restart (or give-up). */
		c->stopping = 0;
		s->awaiting--;
		if (s->awaiting == 0)
			return restart_group(ctx, s);
		return TR_OK;
	}
	if (atomic_load(&tr_ctx_node(ctx)->stopping) || !wants_restart(c, reason))
		return TR_OK;
	if (!note_restart(s)) {
		give_up(ctx, s);
		return TR_OK;
	}
	c->pending = 1;
	uint32_t from = s->nkids; /* one_for_one: nobody else */
	if (s->spec.strategy == TR_ONE_FOR_ALL)
		from = 0;
	else if (s->spec.strategy == TR_REST_FOR_ONE)
		from = i + 1;
	for (uint32_t j = s->nkids; j-- > from;) {
		child *o = &s->kids[j];
		if (j == i)
			continue;
		if (!tr_ref_is_none(o->ref)) {
			o->pending = o->spec.restart != TR_TEMPORARY;
			stop_child(ctx, s, o);
		} else if (o->spec.restart == TR_PERMANENT) {
			o->pending = 1;
		}
	}
	if (s->awaiting == 0)
		return restart_group(ctx, s);
	return TR_OK;
}

static void sup_cleanup(tr_ctx *ctx, sup *s);

static int sup_init(tr_ctx *ctx, void *st, const void *arg)
{
	sup *s = st;
	const tr_sup_spec *spec = arg;
	tr_node *n = tr_ctx_node(ctx);
	if (spec == NULL || (spec->nchildren > 0 && spec->children == NULL))
		return TR_EINVAL;
	s->spec = *spec;
	if (s->spec.max_restarts == 0 && s->spec.within_ms == 0) {
		s->spec.max_restarts = 3;
		s->spec.within_ms = 5000;
	}
	if (s->spec.backoff_max_ms == 0)
		s->spec.backoff_max_ms = s->spec.backoff_base_ms * 10;
	s->spec.children = NULL;
	s->self = tr_self(ctx);
	s->times = tr__calloc(s->spec.max_restarts + 1, sizeof(uint64_t));
	s->kids = tr__calloc(spec->nchildren ? spec->nchildren : 1, sizeof(child));
	if (s->times == NULL || s->kids == NULL) {
		sup_cleanup(ctx, s);
		return TR_ENOMEM;
	}
	for (uint32_t i = 0; i < spec->nchildren; i++) {
		const tr_child_spec *cs = &spec->children[i];
		int dup = 0;
		for (uint32_t j = 0; j < i && cs->name != NULL; j++)
			dup |= strcmp(s->kids[j].name, cs->name) == 0;
		if (cs->name == NULL || cs->ops == NULL || dup ||
		    strlen(cs->name) >= sizeof(s->kids[i].name)) {
			sup_cleanup(ctx, s);
			return TR_EINVAL;
		}
		s->kids[i].spec = *cs;
		strcpy(s->kids[i].name, cs->name);
		s->kids[i].spec.name = s->kids[i].name;
	}
	s->nkids = spec->nchildren;
	tr_trap_exit(ctx, 1);

	s->link.self = s->self;
	s->link.s = s;
	uv_mutex_lock(&n->tree_mu);
	s->link.next = n->sups;
	n->sups = &s->link;
	uv_mutex_unlock(&n->tree_mu);

	for (uint32_t i = 0; i < s->nkids; i++) {
		int rc = start_child(ctx, s, &s->kids[i]);
		if (rc != TR_OK) {
			sup_cleanup(ctx, s);
			return rc;
		}
	}
	return TR_OK;
}

static int sup_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	sup *s = st;
	if (m->tag == TR_TAG_EXIT) {
		for (uint32_t i = 0; i < s->nkids; i++)
			if (tr_ref_eq(s->kids[i].ref, m->from))
				return on_child_exit(ctx, s, i, m->err);
		/* Not a child: our parent (or another linked actor) died. */
		if (m->err != TR_OK)
			tr_stop(ctx, m->err);
		return TR_OK;
	}
	if ((m->flags & TR_MSGF_TIMER) && m->tag == TAG_RESTART) {
		s->restart_timer = 0;
		return start_pending(ctx, s);
	}
	if (m->flags & TR_MSGF_ASK)
		(void)tr_reply_error(ctx, m, TR_EINVAL); /* supervisors answer no questions */
	return TR_OK;
}

/* Stops the children and forgets the supervisor; also the init failure
 * path, where the runtime does not call terminate(). */
static void sup_cleanup(tr_ctx *ctx, sup *s)
{
	tr_node *n = tr_ctx_node(ctx);
	/* Children are linked; stopping them explicitly also covers a
	 * normal stop, where the link alone would not take them down. */
	for (uint32_t i = s->nkids; i-- > 0;)
		if (!tr_ref_is_none(s->kids[i].ref))
			(void)tr__send_sys(n, s->self, s->kids[i].ref, TR_TAG_STOP, TR_ESHUTDOWN, 0, 0, 0);
	uv_mutex_lock(&n->tree_mu);
	for (tr__sup_link **p = &n->sups; *p != NULL; p = &(*p)->next) {
		if (*p == &s->link) {
			*p = s->link.next;
			break;
		}
	}
	uv_mutex_unlock(&n->tree_mu);
	tr__free(s->kids);
	tr__free(s->times);
	s->kids = NULL;
	s->times = NULL;
	s->nkids = 0;
}

static void sup_terminate(tr_ctx *ctx, void *st, int reason)
{
	(void)reason;
	sup_cleanup(ctx, st);
}

const tr_actor_ops tr_sup_ops = {
	.name = "supervisor",
	.size = sizeof(sup),
	.init = sup_init,
	.receive = sup_receive,
	.terminate = sup_terminate,
	.options = {.trap_exit = 1},
};

/* ------------------------------------------------------------------ */
/* walking                                                              */

static sup *find_sup(tr_node *n, tr_ref r)
{
	for (tr__sup_link *l = n->sups; l != NULL; l = l->next)
		if (tr_ref_eq(l->self, r))
			return l->s;
	return NULL;
}

int tr_sup_child(tr_node *n, tr_ref supref, const char *name, tr_ref *out)
{
	int rc = TR_ENOTFOUND;
	uv_mutex_lock(&n->tree_mu);
	sup *s = find_sup(n, supref);
	for (uint32_t i = 0; s != NULL && i < s->nkids; i++) {
		if (strcmp(s->kids[i].name, name) == 0 && !tr_ref_is_none(s->kids[i].ref)) {
			*out = s->kids[i].ref;
			rc = TR_OK;
		}
	}
	uv_mutex_unlock(&n->tree_mu);
	return rc;
}

static int visit(tr_node *n, sup *s, unsigned depth, tr_walk_fn fn, void *ud)
{
	tr_actor_stats st;
	if (tr_actor_stats_get(n, s->self, &st) != TR_OK)
		return 0;
	if (fn(ud, depth, &st, 1))
		return 1;
	for (uint32_t i = 0; i < s->nkids; i++) {
		child *c = &s->kids[i];
		sup *cs = tr_ref_is_none(c->ref) ? NULL : find_sup(n, c->ref);
		if (cs != NULL) {
			if (visit(n, cs, depth + 1, fn, ud))
				return 1;
			continue;
		}
		if (tr_ref_is_none(c->ref) || tr_actor_stats_get(n, c->ref, &st) != TR_OK) {
			/* Down (restart pending): report it by name, with no ref. */
			memset(&st, 0, sizeof(st));
			st.behaviour = c->spec.ops->name;
			memcpy(st.name, c->name, sizeof(st.name));
			st.restarts = c->restarts;
		}
		if (fn(ud, depth + 1, &st, 0))
			return 1;
	}
	return 0;
}

int tr_node_walk(tr_node *n, tr_walk_fn fn, void *ud)
{
	int stop = 0;
	uv_mutex_lock(&n->tree_mu);
	for (tr__sup_link *l = n->sups; l != NULL && !stop; l = l->next) {
		int is_child = 0;
		for (tr__sup_link *p = n->sups; p != NULL && !is_child; p = p->next)
			for (uint32_t i = 0; i < p->s->nkids; i++)
				if (tr_ref_eq(p->s->kids[i].ref, l->self))
					is_child = 1;
		if (!is_child)
			stop = visit(n, l->s, 0, fn, ud);
	}
	uv_mutex_unlock(&n->tree_mu);
	return stop;
}

void tr__sup_walk_free(tr_node *n)
{
	n->sups = NULL; /* every supervisor unlinked itself in terminate */
}
