/*
 * sched/registry.c -- the node's name registry: name -> ref.
 *
 * Names change rarely (spawn with a name, restart, death) and are looked
 * up often (pipelines address actors by name), hence a read-write lock
 * around a chained hash table. A name is dropped automatically when its
 * actor dies; registering a name whose holder is dead takes it over.
 */
#include <string.h>

#include "sched/sched.h"

struct tr__name_ent {
	tr__name_ent *next;
	tr_ref ref;
	char name[64];
};

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h;
}

static tr__name_ent **find(tr_node *n, const char *name)
{
	if (n->names_cap == 0)
		return NULL;
	tr__name_ent **p = &n->names[hash(name) & (n->names_cap - 1)];
	while (*p != NULL && strcmp((*p)->name, name) != 0)
		p = &(*p)->next;
	return p;
}

static int grow(tr_node *n)
{
	uint32_t cap = n->names_cap ? n->names_cap * 2 : 64;
	tr__name_ent **nb = tr__calloc(cap, sizeof(*nb));
	if (nb == NULL)
		return TR_ENOMEM;
	for (uint32_t i = 0; i < n->names_cap; i++) {
		tr__name_ent *e = n->names[i];
		while (e != NULL) {
			tr__name_ent *next = e->next;
			uint32_t b = hash(e->name) & (cap - 1);
			e->next = nb[b];
			nb[b] = e;
			e = next;
		}
	}
	tr__free(n->names);
	n->names = nb;
	n->names_cap = cap;
	return TR_OK;
}

static int alive(tr_node *n, tr_ref r)
{
	tr_actor *a = tr__actor_lock_ref(n, r);
	if (a == NULL)
		return 0;
	tr__spin_unlock(&a->lock);
	return 1;
}

/* Points `name` at `ref` under the write lock: a live holder other than
 * `ref` makes it TR_EEXIST unless `force`. */
static int put(tr_node *n, const char *name, size_t len, tr_ref ref, int force)
{
	uv_rwlock_wrlock(&n->names_mu);
	tr__name_ent **p = find(n, name);
	if (p != NULL && *p != NULL) {
		if (!force && !tr_ref_eq((*p)->ref, ref) && alive(n, (*p)->ref)) {
			uv_rwlock_wrunlock(&n->names_mu);
			return TR_EEXIST;
		}
		(*p)->ref = ref;
	} else {
		if ((n->names_len + 1) * 2 > n->names_cap && grow(n) != TR_OK) {
			uv_rwlock_wrunlock(&n->names_mu);
			return TR_ENOMEM;
		}
		tr__name_ent *e = tr__calloc(1, sizeof(*e));
		if (e == NULL) {
			uv_rwlock_wrunlock(&n->names_mu);
			return TR_ENOMEM;
		}
		memcpy(e->name, name, len + 1);
		e->ref = ref;
		p = find(n, name);
		e->next = *p;
		*p = e;
		n->names_len++;
	}
	/* Relaxed: a change counter the cluster polls; the names themselves
	 * are read under the lock. */
	atomic_fetch_add_explicit(&n->names_ver, 1, memory_order_relaxed);
	uv_rwlock_wrunlock(&n->names_mu);
	return TR_OK;
}

int tr_register_alias(tr_node *n, const char *name, tr_ref ref)
{
	size_t len = name ? strlen(name) : 0;
	if (len == 0 || len >= sizeof(((tr__name_ent *)0)->name))
		return TR_EINVAL;
	return put(n, name, len, ref, 1);
}

int tr_register(tr_node *n, const char *name, tr_ref ref)
{
	size_t len = name ? strlen(name) : 0;
	if (len == 0 || len >= sizeof(((tr__name_ent *)0)->name))
		return TR_EINVAL;
	int rc = put(n, name, len, ref, 0);
	if (rc != TR_OK)
		return rc;

	/* Remember the name on the actor so its death releases it. */
	tr_actor *a = tr__actor_lock_ref(n, ref);
	if (a == NULL) {
		tr__names_drop(n, name, ref);
		return TR_ENOACTOR;
	}
	tr__actor_ext *x = tr__ext(a);
	if (x != NULL)
		memcpy(x->name, name, len + 1);
	tr__spin_unlock(&a->lock);
	return x != NULL ? TR_OK : TR_ENOMEM;
}

void tr__names_drop(tr_node *n, const char *name, tr_ref ref)
{
	uv_rwlock_wrlock(&n->names_mu);
	tr__name_ent **p = find(n, name);
	if (p != NULL && *p != NULL && (tr_ref_is_none(ref) || tr_ref_eq((*p)->ref, ref))) {
		tr__name_ent *e = *p;
		*p = e->next;
		tr__free(e);
		n->names_len--;
		atomic_fetch_add_explicit(&n->names_ver, 1, memory_order_relaxed);
	}
	uv_rwlock_wrunlock(&n->names_mu);
}

int tr_unregister(tr_node *n, const char *name)
{
	tr_ref ref;
	if (tr_whereis(n, name, &ref) != TR_OK)
		return TR_ENOTFOUND;
	tr__names_drop(n, name, ref);
	tr_actor *a = tr__actor_lock_ref(n, ref);
	if (a != NULL) {
		if (a->ext != NULL && strcmp(a->ext->name, name) == 0)
			a->ext->name[0] = '\0';
		tr__spin_unlock(&a->lock);
	}
	return TR_OK;
}

int tr_whereis(tr_node *n, const char *name, tr_ref *ref)
{
	if (name == NULL)
		return TR_EINVAL;
	uv_rwlock_rdlock(&n->names_mu);
	tr__name_ent **p = find(n, name);
	int rc = TR_ENOTFOUND;
	if (p != NULL && *p != NULL) {
		*ref = (*p)->ref;
		rc = TR_OK;
	}
	uv_rwlock_rdunlock(&n->names_mu);
	return rc;
}

size_t tr_whereis_remote(tr_node *n, const char *name, tr_ref *out, size_t max)
{
	const tr__remote_ops *ro = tr__remote(n);
	if (name == NULL || ro == NULL || max == 0)
		return 0;
	return ro->lookup(n->remote_ud, name, out, max);
}

void tr__names_each(tr_node *n, void (*fn)(void *ud, const char *name, tr_ref ref), void *ud)
{
	uv_rwlock_rdlock(&n->names_mu);
	for (uint32_t i = 0; i < n->names_cap; i++)
		for (tr__name_ent *e = n->names[i]; e != NULL; e = e->next)
			fn(ud, e->name, e->ref);
	uv_rwlock_rdunlock(&n->names_mu);
}

void tr__names_free(tr_node *n)
{
	for (uint32_t i = 0; i < n->names_cap; i++) {
		tr__name_ent *e = n->names[i];
		while (e != NULL) {
			tr__name_ent *next = e->next;
			tr__free(e);
			e = next;
		}
	}
	tr__free(n->names);
	n->names = NULL;
	n->names_cap = n->names_len = 0;
}
