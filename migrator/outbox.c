/*
 * migrator/outbox.c - events from the migrator threads to the loop thread:
 * a mutex-protected intrusive list plus a uv_async_t (STYLE.md 2.8). This
 * file is the only place where a migrator thread reaches libuv, and then only
 * through uv_async_send.
 */
#include "migrator/migrator_int.h"

/* Loop thread. Takes ownership of every queued event: sends may have coalesced. */
static void outbox_async_cb(uv_async_t *a)
{
    mig_outbox_t *box = a->data;
    mig_event_t *ev, *next;

    box->n_wakeups++;
    uv_mutex_lock(&box->lock);
    ev = box->head;
    box->head = box->tail = NULL;
    uv_mutex_unlock(&box->lock);
    for (; ev != NULL; ev = next) {
        next = ev->next;
        ev->next = NULL;
        if (box->is_closing) /* closed from inside deliver: drop the rest */
            mig_event_free(ev);
        else
            box->deliver(box->arg, ev);
    }
}

int mig_outbox_init(mig_outbox_t *box, uv_loop_t *loop, mig_outbox_deliver_cb deliver, void *arg)
{
    int rc;

    box->head = box->tail = NULL;
    box->deliver = deliver;
    box->closed = NULL;
    box->arg = arg;
    box->is_closing = false;
    box->n_wakeups = 0;
    rc = uv_mutex_init(&box->lock);
    if (rc != 0)
        return rc;
    rc = uv_async_init(loop, &box->async, outbox_async_cb);
    if (rc != 0) {
        uv_mutex_destroy(&box->lock);
        return rc;
    }
    box->async.data = box;
    return 0;
}

void mig_outbox_push(mig_outbox_t *box, mig_event_t *ev)
{
    bool was_empty;

    ev->next = NULL;
    uv_mutex_lock(&box->lock);
    was_empty = box->head == NULL;
    if (was_empty)
        box->head = ev;
    else
        box->tail->next = ev;
    box->tail = ev;
    uv_mutex_unlock(&box->lock);
    /*
     * Only the first event of a batch signals: the loop steals the whole
     * list, so a later push either lands in the stolen batch or finds the
     * list empty again and signals anew.
     */
    if (was_empty)
        uv_async_send(&box->async);
}

static void outbox_closed_cb(uv_handle_t *h)
{
    mig_outbox_t *box = h->data;
    mig_event_t *ev, *next;

    /* No sender is left (the owner joined its threads), but take the lock for the record. */
    uv_mutex_lock(&box->lock);
    ev = box->head;
    box->head = box->tail = NULL;
    uv_mutex_unlock(&box->lock);
    for (; ev != NULL; ev = next) {
        next = ev->next;
        mig_event_free(ev);
    }
    uv_mutex_destroy(&box->lock);
    if (box->closed != NULL)
        box->closed(box->arg); /* may free box */
}

void mig_outbox_close(mig_outbox_t *box, mig_outbox_closed_cb closed)
{
    BUG_ON(box->is_closing, "outbox closed twice");
    box->is_closing = true;
    box->closed = closed;
    uv_close((uv_handle_t *)&box->async, outbox_closed_cb);
}
