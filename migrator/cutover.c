/*
 * migrator/cutover.c - CUTOVER id on the admin worker (placeholder while
 * the dual-write runner lands).
 */
#include "migrator/migrator_int.h"

mig_result_t *mig_cutover_request(const mig_env_t *env, PGconn **control, const mig_request_t *req)
{
    (void)env;
    (void)control;
    (void)req;
    return mig_result_error("0A000", "CUTOVER is not available yet");
}
