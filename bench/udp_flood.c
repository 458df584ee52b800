// udp_flood: UDP datagrams of 16 bytes to ADDRESS:PORT as fast as one CPU sends them, until killed
// (bench_drops.py builds it with the system's C compiler; to a closed port every one is a drop).
// Usage: udp_flood ADDRESS PORT
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	struct sockaddr_in to = { .sin_family = AF_INET };
	char payload[16] = "netio drop test";
	int sock = socket(AF_INET, SOCK_DGRAM, 0);

	if (argc != 3 || sock < 0 || inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
		fprintf(stderr, "usage: udp_flood ADDRESS PORT\n");
		return 2;
	}
	to.sin_port = htons(atoi(argv[2]));
	for (;;)
		sendto(sock, payload, sizeof(payload), 0, (struct sockaddr *)&to, sizeof(to));
}
