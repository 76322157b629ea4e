/*
 * core/clock.c -- monotonic and wall clocks.
 *
 * clock_gettime through the vDSO costs ~20 ns; callers on hot paths
 * (mailbox timing) sample it once per turn, not once per message.
 */
#include <time.h>

#include <troupe/node.h>

uint64_t tr_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t tr_wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
