/* ns-test: whether the setns system call is allowed (a minimal stand-in for the project's test). */
#define _GNU_SOURCE
#include <sched.h>

int main(void) {
	return setns(-1, 0) == 0 ? 0 : 1;
}
