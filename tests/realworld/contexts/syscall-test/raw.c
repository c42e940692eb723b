/* raw-test: whether the socket system call is allowed (a minimal stand-in for the project's test). */
#include <sys/socket.h>
#include <netinet/in.h>

int main(void) {
	return socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) >= 0 ? 0 : 1;
}
