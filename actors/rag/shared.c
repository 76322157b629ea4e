/*
 * actors/rag/shared.c -- one index per (folder, settings) in the process,
 * shared by every instance that reads it, and the watcher that rebuilds
 * it when the files change. See rag.h.
 *
 * Design notes.
 *  - The registry is a list under one mutex (reg_mu). The first acquirer
 *    builds the index while holding it, so instances started together
 *    wait for that one build instead of each making their own; the cost
 *    is that an unrelated folder's first build waits too, at start-up
 *    only.
 *  - Why a thread per watched entry rather than an actor timer: a scan
 *    stats every file and a rebuild reads and indexes them all, which is
 *    blocking work the scheduler's threads must not do (actor callbacks
 *    never block). The thread sleeps on a condition variable between
 *    scans and is woken at once to stop; a build in progress checks a
 *    cancel flag between files.
 *  - Swapping: the watcher builds the new index with no lock held, then
 *    under sh->mu replaces `cur` and bumps `gen`. A reader compares `gen`
 *    with the one it saw (one atomic load per query) and only then takes
 *    the mutex to move to the new index, so queries never contend on it.
 *    The old index is freed by whoever drops its last reference: an
 *    instance that gets no query keeps it until its next one or its stop.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include <troupe/err.h>

#include "actors/rag/rag.h"
#include "core/alloc.h"

struct rag_shared {
	/* guarded by reg_mu */
	rag_shared *next;
	unsigned users;
	/* fixed at creation */
	char *key;            /* dir, chunk, overlap, watch, extensions */
	char *dir;            /* absolute */
	char **ext;
	size_t next_;
	rag_build_opts bopts;
	int watch;
	/* guarded by mu */
	uv_mutex_t mu;
	uv_cond_t cond;
	rag_index *cur;
	int stop;
	atomic_uint gen;
	atomic_int cancel;    /* set with stop: a build in progress gives up */
	/* the listing `cur` was built from: the watcher thread's alone when
	 * watching, else guarded by reg_mu (rescanned at each acquire) */
	rag_listing seen;
	uv_thread_t thread;
	int has_thread;
};

static uv_once_t reg_once = UV_ONCE_INIT;
static uv_mutex_t reg_mu;
static rag_shared *reg;
static size_t reg_n;

static void reg_init(void)
{
	if (uv_mutex_init(&reg_mu) != 0)
		abort(); /* only fails for lack of resources at start-up */
}

static void entry_free(rag_shared *sh)
{
	if (sh == NULL)
		return;
	rag_index_unref(sh->cur);
	rag_listing_free(&sh->seen);
	for (size_t i = 0; sh->ext != NULL && i < sh->next_; i++)
		tr__free(sh->ext[i]);
	tr__free(sh->ext);
	tr__free(sh->key);
	tr__free(sh->dir);
	tr__free(sh);
}

/* Swaps ix in as the current index. */
static void swap_in(rag_shared *sh, rag_index *ix)
{
	uv_mutex_lock(&sh->mu);
	rag_index *old = sh->cur;
	sh->cur = ix;
	/* release: a reader that sees the new gen then takes mu, which
	 * orders it after the store to cur anyway; release keeps the
	 * counter meaningful on its own */
	atomic_fetch_add_explicit(&sh->gen, 1, memory_order_release);
	uv_mutex_unlock(&sh->mu);
	rag_index_unref(old);
}

/* Lists the folder again and rebuilds if anything changed. A folder that
 * cannot be listed, or a build that fails, leaves the current index
 * serving; the next scan tries again (seen is unchanged). */
static void refresh(rag_shared *sh)
{
	rag_listing ls;
	rag_index *ix;
	char err[256];
	if (rag_scan(sh->dir, sh->ext, sh->next_, &ls, err, sizeof(err)) != TR_OK)
		return;
	if (rag_listing_same(&ls, &sh->seen) ||
	    rag_index_build(sh->dir, &ls, &sh->bopts, &ix) != TR_OK) {
		rag_listing_free(&ls);
		return;
	}
	swap_in(sh, ix);
	rag_listing_free(&sh->seen);
	sh->seen = ls;
}

static void watch_main(void *arg)
{
	rag_shared *sh = arg;
	uv_mutex_lock(&sh->mu);
	while (!sh->stop) {
		/* a spurious wake-up only makes one scan early */
		(void)uv_cond_timedwait(&sh->cond, &sh->mu, (uint64_t)RAG_WATCH_MS * 1000000u);
		if (sh->stop)
			break;
		uv_mutex_unlock(&sh->mu);
		refresh(sh);
		uv_mutex_lock(&sh->mu);
	}
	uv_mutex_unlock(&sh->mu);
}

/* The registry key: everything that makes two indexes differ. */
static char *make_key(const char *abs, const rag_shared_opts *o)
{
	size_t n = strlen(abs) + 64;
	for (size_t i = 0; i < o->next; i++)
		n += strlen(o->ext[i]) + 1;
	char *k = tr__malloc(n);
	if (k == NULL)
		return NULL;
	size_t off = (size_t)snprintf(k, n, "%s\n%u\n%u\n%d", abs, o->chunk, o->overlap, !!o->watch);
	for (size_t i = 0; i < o->next; i++)
		off += (size_t)snprintf(k + off, n - off, "\n%s", o->ext[i]);
	return k;
}

static void dir_error(const rag_shared_opts *o, int e, char *err, size_t errlen)
{
	char cwd[PATH_MAX];
	if (o->dir[0] != '/' && getcwd(cwd, sizeof(cwd)) != NULL)
		snprintf(err, errlen, "dir: cannot open '%s' (in %s): %s", o->dir, cwd, strerror(e));
	else
		snprintf(err, errlen, "dir: cannot open '%s': %s", o->dir, strerror(e));
}

int rag_shared_acquire(const rag_shared_opts *o, rag_shared **out, char *err, size_t errlen)
{
	char abs[PATH_MAX];
	struct stat st;
	rag_shared *sh = NULL;
	int rc = TR_ENOMEM, mu_ok = 0, cond_ok = 0;

	*out = NULL;
	uv_once(&reg_once, reg_init);
	if (realpath(o->dir, abs) == NULL) {
		dir_error(o, errno, err, errlen);
		return TR_ENOTFOUND;
	}
	if (stat(abs, &st) != 0 || !S_ISDIR(st.st_mode)) {
		dir_error(o, ENOTDIR, err, errlen);
		return TR_ENOTFOUND;
	}
	char *key = make_key(abs, o);
	if (key == NULL) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	uv_mutex_lock(&reg_mu);
	for (sh = reg; sh != NULL; sh = sh->next) {
		if (strcmp(sh->key, key) == 0) {
			sh->users++;
			/* Without a watcher, a new instance (a restart, a reload)
			 * is when changed files are picked up. */
			if (!sh->watch)
				refresh(sh);
			uv_mutex_unlock(&reg_mu);
			tr__free(key);
			*out = sh;
			return TR_OK;
		}
	}
	if ((sh = tr__calloc(1, sizeof(*sh))) == NULL)
		goto fail;
	sh->key = key;
	key = NULL;
	sh->dir = tr__strndup(abs, strlen(abs));
	sh->ext = tr__calloc(o->next ? o->next : 1, sizeof(char *));
	if (sh->dir == NULL || sh->ext == NULL)
		goto fail;
	for (size_t i = 0; i < o->next; i++) {
		if ((sh->ext[i] = tr__strndup(o->ext[i], strlen(o->ext[i]))) == NULL)
			goto fail;
		sh->next_ = i + 1;
	}
	sh->bopts = (rag_build_opts){.chunk = o->chunk, .overlap = o->overlap, .cancel = &sh->cancel};
	sh->watch = o->watch;
	atomic_init(&sh->gen, 0);
	atomic_init(&sh->cancel, 0);
	mu_ok = uv_mutex_init(&sh->mu) == 0;
	cond_ok = mu_ok && uv_cond_init(&sh->cond) == 0;
	if (!cond_ok)
		goto fail;
	char serr[256];
	rc = rag_scan(sh->dir, sh->ext, sh->next_, &sh->seen, serr, sizeof(serr));
	if (rc != TR_OK) {
		snprintf(err, errlen, "dir: %s", serr);
		goto fail_msg;
	}
	rc = rag_index_build(sh->dir, &sh->seen, &sh->bopts, &sh->cur);
	if (rc != TR_OK)
		goto fail;
	if (sh->watch) {
		if (uv_thread_create(&sh->thread, watch_main, sh) != 0) {
			rc = TR_ENOMEM;
			goto fail;
		}
		sh->has_thread = 1;
	}
	sh->users = 1;
	sh->next = reg;
	reg = sh;
	reg_n++;
	uv_mutex_unlock(&reg_mu);
	*out = sh;
	return TR_OK;
fail:
	snprintf(err, errlen, "out of memory building the index of '%s'", o->dir);
fail_msg:
	uv_mutex_unlock(&reg_mu);
	if (sh != NULL && cond_ok)
		uv_cond_destroy(&sh->cond);
	if (sh != NULL && mu_ok)
		uv_mutex_destroy(&sh->mu);
	entry_free(sh);
	tr__free(key);
	return rc == TR_OK ? TR_ENOMEM : rc;
}

void rag_shared_release(rag_shared *sh)
{
	if (sh == NULL)
		return;
	uv_mutex_lock(&reg_mu);
	if (--sh->users > 0) {
		uv_mutex_unlock(&reg_mu);
		return;
	}
	for (rag_shared **p = &reg; *p != NULL; p = &(*p)->next) {
		if (*p == sh) {
			*p = sh->next;
			reg_n--;
			break;
		}
	}
	uv_mutex_unlock(&reg_mu);
	if (sh->has_thread) {
		uv_mutex_lock(&sh->mu);
		sh->stop = 1;
		atomic_store_explicit(&sh->cancel, 1, memory_order_relaxed);
		uv_cond_signal(&sh->cond);
		uv_mutex_unlock(&sh->mu);
		uv_thread_join(&sh->thread);
	}
	uv_cond_destroy(&sh->cond);
	uv_mutex_destroy(&sh->mu);
	entry_free(sh);
}

rag_index *rag_shared_current(rag_shared *sh)
{
	uv_mutex_lock(&sh->mu);
	rag_index *ix = sh->cur;
	rag_index_ref(ix);
	uv_mutex_unlock(&sh->mu);
	return ix;
}

unsigned rag_shared_gen(rag_shared *sh)
{
	return atomic_load_explicit(&sh->gen, memory_order_acquire);
}

size_t rag_shared_count(void)
{
	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	size_t n = reg_n;
	uv_mutex_unlock(&reg_mu);
	return n;
}
