/*
 * actors/telemetry/writer.h -- the telemetry actors' writer threads: each
 * takes batches of whole JSON lines and writes them to one target,
 * stdout or a file that rotates by size, so that no actor turn ever waits
 * on a disk.
 *
 * Writers are shared: every actor that names the same file (instances of
 * one actor, or the old and new generation during a hot reload) gets the
 * same writer, so one thread owns the file and rotates it; every stdout
 * sink shares one writer too. Files are matched by the path as written.
 *
 * An actor hands a batch over (tel_writer_push: a copy under a mutex);
 * the thread writes it with the mutex released.
 */
#ifndef TR_ACTORS_TELEMETRY_WRITER_H
#define TR_ACTORS_TELEMETRY_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>

typedef struct tel_writer tel_writer;

typedef struct tel_writer_opts {
	const char *path;     /* the file; NULL: stdout */
	uint64_t max_bytes;   /* files: rotate before the file would pass this */
	unsigned keep;        /* files: rotated files kept, path.1 .. path.<keep> */
	size_t max_pending;   /* bytes queued for the thread at most */
} tel_writer_opts;

typedef struct tel_writer_stats {
	uint64_t bytes_written;
	uint64_t write_errors;
	uint64_t rotations;
} tel_writer_stats;

/* The writer for o's target: an existing one (its settings become o's:
 * the newest sharer's max_bytes, keep and max_pending win), or a new one
 * that opens the file (created, appended to) and starts its thread.
 * TR_OK; TR_EIO with "file: cannot open 'path': reason" in err;
 * TR_ENOMEM. Pair with tel_writer_close. */
int tel_writer_open(const tel_writer_opts *o, tel_writer **out, char *err, size_t errlen);

/* Queues a copy of p[0..n) (whole lines, nlines of them) for the thread.
 * Returns the number of lines dropped: nlines when max_pending would be
 * passed (or on ENOMEM), else 0. Any thread. */
uint64_t tel_writer_push(tel_writer *w, const void *p, size_t n, uint64_t nlines);

/* Counters (relaxed atomics; any thread). */
void tel_writer_stats_get(tel_writer *w, tel_writer_stats *out);

/* Drops one reference; the last one writes what is queued, stops the
 * thread and frees w, blocking for that last write (at most max_pending
 * bytes). NULL is a no-op. */
void tel_writer_close(tel_writer *w);

#endif
