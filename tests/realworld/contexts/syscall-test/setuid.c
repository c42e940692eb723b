/* setuid-test: whether the setuid system call is allowed (a minimal stand-in for the project's test). */
#include <unistd.h>

int main(void) {
	return setuid(1) == 0 ? 0 : 1;
}
