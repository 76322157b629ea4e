/*
 * tcluster.h -- what the cluster tests share (test_cluster.c,
 * test_remote.c): reading the cluster's counters, stopping a node with
 * its cluster, and running each scenario in a child process.
 *
 * Header-only; include after tt.h and tnode.h in one .c per binary.
 */
#ifndef TCLUSTER_H
#define TCLUSTER_H

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster/cluster.h"

static inline uint64_t tc_stat(const tr_cluster *c, size_t off)
{
	const char *s = (const char *)tr_cluster_stats_of(c);
	return atomic_load((const atomic_uint_fast64_t *)(s + off));
}
#define ST(c, f) tc_stat((c), offsetof(tr_cluster_stats, f))

/* The options of a test node: cluster `name`/`id` on a loopback port the
 * kernel picks, seeded with `*seed` when it is not NULL (seed points at
 * the caller's one-element array, which must outlive the start); the
 * caller sets the rest (timings, labels, ...). */
static inline tr_cluster_opts tc_opts(const char *name, uint32_t id, const char **seed,
                                      const unsigned char *secret, size_t secret_len)
{
	tr_cluster_opts o = {0};
	o.name = name;
	o.node_id = id;
	o.listen = "tcp://127.0.0.1:0";
	o.seeds = seed;
	o.nseeds = *seed != NULL ? 1 : 0;
	o.secret = secret;
	o.secret_len = secret_len;
	return o;
}

/* Starts node o->node_id with `threads` workers and its cluster actor on
 * worker `worker`; url gets the cluster's address. 0, or -1 (said why). */
static inline int tc_start(const tr_cluster_opts *o, unsigned threads, unsigned worker,
                           tr_node **n, tr_cluster **c, char *url, size_t urllen)
{
	tr_node_opts no = {0};
	char err[256];
	no.threads = threads;
	no.node_id = o->node_id;
	if (tr_node_new(&no, n) != TR_OK || tr_node_start(*n) != TR_OK)
		return -1;
	int rc = tr_cluster_start(*n, worker, o, c, err, sizeof(err));
	if (rc != TR_OK) {
		fprintf(stderr, "  tr_cluster_start(%s): %s: %s\n", o->name, tr_err_name(rc), err);
		return -1;
	}
	snprintf(url, urllen, "tcp://127.0.0.1:%d", tr_cluster_port(*c));
	return 0;
}

/* Set when a cluster's nng_close hung (nng 1.5.2, see tc_in_child). */
static int tc_nng_stuck;

/* Stops node n, then frees it and its cluster c; a cluster whose close
 * hung is left allocated (tr_cluster_free would not free it anyway). */
static inline void tc_stop(tr_node *n, tr_cluster *c)
{
	tr_node_shutdown(n, 0);
	tr_node_wait(n);
	if (tr__cluster_test_close_stuck(c))
		tc_nng_stuck = 1;
	tr_node_free(n);
	tr_cluster_free(c);
}

/*
 * nng 1.5.2 sometimes never returns from nng_close (its one reaper thread
 * waits for ever on a pipe receive: nng #1543, fixed in 1.7.2). The
 * cluster bounds the wait, but the stuck reaper is process-wide: later
 * pipes of every socket in the process are never reaped. So each scenario
 * runs in its own process (this one never touches nng, so fork is safe:
 * "nng is not fork-reentrant safe"), within 90 s, and a scenario that
 * failed after that hang was hit is run again, at most twice more,
 * saying so.
 */
static inline void tc_in_child(void (*fn)(int *), const char *name, int *tt_failed)
{
	for (int attempt = 1; attempt <= 3; attempt++) {
		fflush(stdout);
		fflush(stderr);
		pid_t pid = fork();
		if (pid < 0) {
			*tt_failed = 1;
			return;
		}
		if (pid == 0) {
			int failed = 0;
			fn(&failed);
			fflush(stdout);
			_exit(failed ? (tc_nng_stuck ? 77 : 1) : 0);
		}
		int st = 0;
		uint64_t until = tr_now_ns() + 90ull * 1000000000u;
		while (waitpid(pid, &st, WNOHANG) == 0) {
			if (tr_now_ns() > until) {
				fprintf(stderr, "  %s: timed out\n", name);
				kill(pid, SIGKILL);
				waitpid(pid, &st, 0);
				*tt_failed = 1;
				return;
			}
			tn_sleep_ms(10);
		}
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			return;
		if (!(WIFEXITED(st) && WEXITSTATUS(st) == 77)) {
			*tt_failed = 1;
			return;
		}
		fprintf(stderr, "  %s: failed after nng 1.5.2's close hang; again (%d)\n", name, attempt);
	}
	*tt_failed = 1;
}

#endif
