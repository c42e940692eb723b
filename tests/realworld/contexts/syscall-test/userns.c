/* userns-test: whether the unshare system call is allowed (a minimal stand-in for the project's test). */
#define _GNU_SOURCE
#include <sched.h>

int main(void) {
	return unshare(CLONE_NEWUSER) == 0 ? 0 : 1;
}
