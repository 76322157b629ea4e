/*
 * replay.c -- runs a fuzz target's LLVMFuzzerTestOneInput over files,
 * without libFuzzer: the normal builds' regression test of each target
 * (tests/fuzz/meson.build). Usage:
 *
 *   fuzz_<target>_replay NAME DIR...
 *
 * Every regular file in each DIR (sorted by name, dotfiles skipped) is one
 * input. Its path is printed before it runs, so that a crash (abort,
 * sanitizer report) names its input on the line above. A DIR that cannot
 * be read is one failure. A target may define fuzz_teardown() to free
 * what it keeps between inputs (the leak check at exit sees the rest).
 * Prints "tt: NAME: N passed, N failed" (tests/harness/tt.h).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void fuzz_teardown(void) __attribute__((weak));

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

/* The whole file at path into *out (owned by the caller); -1 on error. */
static int slurp(const char *path, uint8_t **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t n = 0, cap = 0, r;

	if (f == NULL)
		return -1;
	do {
		if (n == cap) {
			uint8_t *nb = realloc(buf, cap = cap ? cap * 2 : 4096);
			if (nb == NULL) {
				free(buf);
				fclose(f);
				return -1;
			}
			buf = nb;
		}
		r = fread(buf + n, 1, cap - n, f);
		n += r;
	} while (r > 0);
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		return -1;
	}
	*out = buf;
	*len = n;
	return 0;
}

int main(int argc, char **argv)
{
	unsigned passed = 0, failed = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: %s NAME DIR...\n", argv[0]);
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		struct dirent **ents;
		int n = scandir(argv[i], &ents, NULL, by_name);
		if (n < 0) {
			printf("cannot read %s\n", argv[i]);
			failed++;
			continue;
		}
		for (int k = 0; k < n; k++) {
			char path[4096];
			uint8_t *data;
			size_t len;
			if (ents[k]->d_name[0] != '.' && ents[k]->d_type != DT_DIR &&
			    snprintf(path, sizeof(path), "%s/%s", argv[i], ents[k]->d_name) <
			        (int)sizeof(path)) {
				printf("run %s\n", path);
				fflush(stdout);
				if (slurp(path, &data, &len) != 0) {
					printf("cannot read %s\n", path);
					failed++;
				} else {
					LLVMFuzzerTestOneInput(data, len);
					free(data);
					passed++;
				}
			}
			free(ents[k]);
		}
		free(ents);
	}
	if (fuzz_teardown)
		fuzz_teardown();
	printf("tt: %s: %u passed, %u failed\n", argv[1], passed, failed);
	return failed == 0 ? 0 : 1;
}
