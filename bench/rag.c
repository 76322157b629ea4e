/*
 * bench/rag.c -- the rag kind's embedded BM25 index: build speed, memory
 * and query rate on a synthetic corpus.
 *
 *   rag [MB] [--queries N] [--top-k K] [--keep]
 *   rag --dir DIR [--queries N] [--top-k K]
 *
 * Writes MB (default 10) million bytes of markdown into a fresh folder
 * under /tmp: files of ~100 KB, lines of 12 words, a "##" heading every
 * 40 lines, words drawn from a 50 000-word vocabulary with Zipf-like
 * frequencies (rank r with probability ~ 1/r: r = V^u, u uniform). None
 * of the words is a stop word, so every token is indexed: harder than
 * English text, where a third of the tokens are dropped.
 *
 * Then builds the index three times (listing + reading + chunking +
 * indexing, files in the page cache) and runs N queries (default 20 000)
 * of 3 words drawn from the same distribution, top_k K (default 8), on
 * one thread. Prints, in the peers' format:
 *   peer=troupe bench=rag_build_10mb threads=1 rate=<MB/s> unit=MB/s seconds=<median build>
 *   peer=troupe bench=rag_index_mem threads=1 rate=<index bytes / corpus byte> unit=ratio seconds=<build>
 *   peer=troupe bench=rag_index_rss threads=1 rate=<RSS growth / corpus byte> unit=ratio seconds=<build>
 *   peer=troupe bench=rag_query threads=1 rate=<q/s> unit=q/s seconds=<query time>
 * (MB = 10^6 bytes; the index bytes are the index's own count of what it
 * holds, the RSS growth is measured around the first build.) The folder
 * is removed unless --keep.
 *
 * With --dir, the same figures for an existing folder (bench=rag_build_dir),
 * with queries of 3 terms drawn uniformly from its own vocabulary.
 */
#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <troupe/err.h>

#include "actors/rag/rag.h"

#define VOCAB 50000u

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
	/* xorshift64*: fast, deterministic, good enough for word draws */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ull;
}

static double uniform(void)
{
	return (double)(next_rand() >> 11) / 9007199254740992.0;
}

static char words[VOCAB][16];

/* Word r: base-20 digits as syllables, so frequent words are short. */
static void make_vocab(void)
{
	static const char *syl[20] = {"ka", "ro", "mi", "te", "su", "na", "lo", "vi", "de", "pu",
	                              "ba", "ze", "ri", "go", "fa", "ne", "ti", "mo", "ha", "ly"};
	for (unsigned r = 0; r < VOCAB; r++) {
		unsigned x = r;
		char *w = words[r];
		size_t o = 0;
		do {
			memcpy(w + o, syl[x % 20], 2);
			o += 2;
			x /= 20;
		} while (x > 0 && o + 2 < sizeof(words[0]));
		w[o] = '\0';
	}
}

static double log_vocab;

static const char *zipf_word(void)
{
	unsigned r = (unsigned)exp(uniform() * log_vocab) - 1;
	return words[r < VOCAB ? r : VOCAB - 1];
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t rss_bytes(void)
{
	long pages = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%ld %ld", &pages, &res) != 2)
		res = 0;
	fclose(f);
	return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* Writes the corpus: returns the bytes written, 0 on failure. */
static size_t write_corpus(const char *dir, size_t want)
{
	size_t total = 0;
	char path[4200], line[512];
	for (unsigned f = 0; total < want; f++) {
		snprintf(path, sizeof(path), "%s/%s/doc%04u.md", dir, f % 2 ? "b" : "a", f);
		FILE *fp = fopen(path, "w");
		if (fp == NULL)
			return 0;
		size_t fsize = 0;
		for (unsigned l = 0; fsize < 100000 && total + fsize < want; l++) {
			size_t o = 0;
			if (l % 40 == 0)
				o += (size_t)snprintf(line, sizeof(line), "\n## %s %s\n\n", zipf_word(),
				                      zipf_word());
			for (int w = 0; w < 12; w++)
				o += (size_t)snprintf(line + o, sizeof(line) - o, "%s%s", zipf_word(),
				                      w == 11 ? ".\n" : " ");
			fwrite(line, 1, o, fp);
			fsize += o;
		}
		fclose(fp);
		total += fsize;
	}
	return total;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	double mb = 10;
	unsigned queries = 20000, top_k = 8;
	int keep = 0;
	const char *given = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
			given = argv[++i];
		else if (strcmp(argv[i], "--queries") == 0 && i + 1 < argc)
			queries = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--top-k") == 0 && i + 1 < argc)
			top_k = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--keep") == 0)
			keep = 1;
		else if (argv[i][0] != '-')
			mb = strtod(argv[i], NULL);
		else {
			fprintf(stderr, "usage: rag [MB | --dir DIR] [--queries N] [--top-k K] [--keep]\n");
			return 2;
		}
	}
	if (mb <= 0 || top_k < 1 || top_k > RAG_TOP_MAX || queries == 0) {
		fprintf(stderr, "rag: MB > 0, 1 <= top-k <= %d, queries > 0\n", RAG_TOP_MAX);
		return 2;
	}
	make_vocab();
	log_vocab = log((double)VOCAB + 1);

	char dir[4096], sub[4200];
	size_t corpus = 0;
	if (given != NULL) {
		snprintf(dir, sizeof(dir), "%s", given);
		keep = 1;
	} else {
		snprintf(dir, sizeof(dir), "/tmp/bench_rag.XXXXXX");
		if (mkdtemp(dir) == NULL) {
			perror("mkdtemp");
			return 1;
		}
		/* two subfolders: the listing recurses, as on a real docs tree */
		snprintf(sub, sizeof(sub), "%s/a", dir);
		int bad = mkdir(sub, 0755) != 0;
		snprintf(sub, sizeof(sub), "%s/b", dir);
		bad |= mkdir(sub, 0755) != 0;
		corpus = bad ? 0 : write_corpus(dir, (size_t)(mb * 1e6));
		if (corpus == 0) {
			fprintf(stderr, "rag: cannot write the corpus in %s\n", dir);
			return 1;
		}
	}

	char *const ext[] = {".md", ".txt"};
	rag_build_opts bo = {.chunk = 120, .overlap = 30};
	rag_index *ix = NULL;
	double t[3];
	size_t rss0 = 0, rss1 = 0;
	char err[256];
	for (int run = 0; run < 3; run++) {
		rag_listing ls;
		rag_index *next = NULL;
		malloc_trim(0);
		if (run == 0)
			rss0 = rss_bytes();
		double t0 = now_s();
		if (rag_scan(dir, ext, 2, &ls, err, sizeof(err)) != TR_OK ||
		    rag_index_build(dir, &ls, &bo, &next) != TR_OK) {
			fprintf(stderr, "rag: build failed: %s\n", err);
			return 1;
		}
		t[run] = now_s() - t0;
		rag_listing_free(&ls);
		if (run == 0) {
			malloc_trim(0);
			rss1 = rss_bytes();
			ix = next;
		} else {
			rag_index_unref(next);
		}
	}
	double tb[3] = {t[0], t[1], t[2]};
	qsort(tb, 3, sizeof(double), cmp_double);
	const rag_index_stats *st = &ix->st;
	if (st->text_bytes == 0) {
		fprintf(stderr, "rag: no text in %s\n", dir);
		return 1;
	}
	corpus = st->text_bytes;
	fprintf(stderr,
	        "# corpus %zu bytes in %zu files: %zu chunks, %zu terms, %zu postings; index %zu "
	        "bytes, RSS +%zu bytes; builds %.3f %.3f %.3f s\n",
	        corpus, st->files, st->chunks, st->terms, st->postings, st->mem_bytes,
	        rss1 > rss0 ? rss1 - rss0 : 0, t[0], t[1], t[2]);
	char name[32];
	if (given != NULL)
		snprintf(name, sizeof(name), "dir");
	else
		snprintf(name, sizeof(name), "%gmb", mb);
	printf("peer=troupe bench=rag_build_%s threads=1 rate=%.1f unit=MB/s seconds=%.3f\n", name,
	       (double)st->text_bytes / 1e6 / tb[1], tb[1]);
	printf("peer=troupe bench=rag_index_mem threads=1 rate=%.3f unit=ratio seconds=%.3f\n",
	       (double)st->mem_bytes / (double)st->text_bytes, t[0]);
	printf("peer=troupe bench=rag_index_rss threads=1 rate=%.3f unit=ratio seconds=%.3f\n",
	       (double)(rss1 > rss0 ? rss1 - rss0 : 0) / (double)st->text_bytes, t[0]);

	/* queries: drawn up front, so the timing is the index's alone */
	char (*qs)[64] = malloc((size_t)queries * sizeof(*qs));
	if (qs == NULL)
		return 1;
	for (unsigned i = 0; i < queries; i++) {
		if (given == NULL) {
			snprintf(qs[i], sizeof(qs[i]), "%s %s %s", zipf_word(), zipf_word(), zipf_word());
			continue;
		}
		size_t o = 0;
		for (int w = 0; w < 3 && ix->nterms > 0; w++) {
			uint32_t t = (uint32_t)(next_rand() % ix->nterms);
			unsigned n = ix->term_len[t] < 20 ? ix->term_len[t] : 20;
			o += (size_t)snprintf(qs[i] + o, sizeof(qs[i]) - o, "%.*s ", (int)n,
			                      ix->terms + ix->term_off[t]);
		}
	}
	rag_scratch sc = {0};
	rag_hit hits[RAG_TOP_MAX];
	rag_query_opts qo = {.k1 = 1.2, .b = 0.75, .top_k = top_k, .min_score = 0};
	unsigned long found = 0;
	double q0 = now_s();
	for (unsigned i = 0; i < queries; i++) {
		int n = rag_query(ix, &sc, qs[i], strlen(qs[i]), &qo, hits);
		if (n < 0)
			return 1;
		found += (unsigned long)n;
	}
	double qt = now_s() - q0;
	fprintf(stderr, "# %u queries, %.2f passages each on average\n", queries,
	        (double)found / queries);
	printf("peer=troupe bench=rag_query threads=1 rate=%.0f unit=q/s seconds=%.3f\n",
	       queries / qt, qt);
	rag_scratch_free(&sc);
	rag_index_unref(ix);
	free(qs);
	if (!keep) {
		char cmd[4200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "rag: could not remove %s\n", dir);
	} else if (given == NULL) {
		fprintf(stderr, "# corpus kept in %s\n", dir);
	}
	return 0;
}
