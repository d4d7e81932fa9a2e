/* vsock-echo: the guest side of husk's vsock echo tests (busybox nc has no AF_VSOCK).
 *   vsock-echo listen PORT        accept one stream on PORT, echo it back until EOF
 *   vsock-echo connect CID PORT MSG
 *                                 send MSG, shut down writing, print what comes back
 * Exit status 0 on success, 1 with a message on stderr otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

static int die(const char *what) {
    perror(what);
    return 1;
}

static struct sockaddr_vm addr(unsigned cid, unsigned port) {
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    return a;
}

int main(int argc, char **argv) {
    char buf[4096];
    ssize_t n;
    if (argc == 3 && !strcmp(argv[1], "listen")) {
        struct sockaddr_vm a = addr(VMADDR_CID_ANY, (unsigned)atoi(argv[2]));
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0) return die("socket");
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return die("bind");
        if (listen(s, 1) < 0) return die("listen");
        int c = accept(s, NULL, NULL);
        if (c < 0) return die("accept");
        while ((n = read(c, buf, sizeof buf)) > 0)
            if (write(c, buf, (size_t)n) != n) return die("write");
        return n < 0 ? die("read") : 0;
    }
    if (argc == 5 && !strcmp(argv[1], "connect")) {
        struct sockaddr_vm a = addr((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]));
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0) return die("socket");
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) return die("connect");
        size_t len = strlen(argv[4]);
        if (write(s, argv[4], len) != (ssize_t)len) return die("write");
        shutdown(s, SHUT_WR);
        while ((n = read(s, buf, sizeof buf)) > 0) fwrite(buf, 1, (size_t)n, stdout);
        return n < 0 ? die("read") : 0;
    }
    fprintf(stderr, "usage: vsock-echo listen PORT | connect CID PORT MSG\n");
    return 1;
}
