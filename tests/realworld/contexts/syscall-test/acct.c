/* acct-test: whether the acct system call is allowed (a minimal stand-in for the project's test). */
#include <unistd.h>

int main(void) {
	return acct(0) == 0 ? 0 : 1;
}
