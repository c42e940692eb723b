/* socket-test: whether the socket system call is allowed (a minimal stand-in for the project's test). */
#include <sys/socket.h>
#include <netinet/in.h>

int main(void) {
	return socket(AF_APPLETALK, SOCK_DGRAM, 0) >= 0 ? 0 : 1;
}
