/* A client certificate for wrk (hastack bench): LD_PRELOADed, it loads the certificate chain
 * and key named by HASTACK_WRK_CERT / HASTACK_WRK_KEY into every SSL_CTX wrk creates.
 *
 * wrk is the packaged HTTP/1.1 keep-alive generator, but it has no client-certificate option,
 * and the direct routes of the bench need one (nginx admits the load balancers' certificate,
 * gunicorn the web servers'). OpenSSL's configuration file cannot add one either: its
 * system_default section refuses certificate commands. Without both variables this changes
 * nothing. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/ssl.h>

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
    static SSL_CTX *(*real)(const SSL_METHOD *) = NULL;
    if (real == NULL)
        real = (SSL_CTX *(*)(const SSL_METHOD *))dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("HASTACK_WRK_CERT"), *key = getenv("HASTACK_WRK_KEY");
    if (ctx == NULL || cert == NULL || key == NULL)
        return ctx;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1
        || SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "hastack: cannot use the client certificate %s / %s\n", cert, key);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}
