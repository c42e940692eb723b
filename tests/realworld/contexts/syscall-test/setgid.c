/* setgid-test: whether the setgid system call is allowed (a minimal stand-in for the project's test). */
#include <unistd.h>

int main(void) {
	return setgid(1) == 0 ? 0 : 1;
}
