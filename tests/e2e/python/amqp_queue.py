"""An independent AMQP 1.0 client (Apache Qpid Proton) for RabbitMQ's AMQP 1.0 plugin.

Usage: amqp_queue.py declare <queue>
       amqp_queue.py read <queue> <expected message count>

`declare` creates the queue (the plugin declares a queue when a link attaches to /queue/<name>).
`read` consumes from /amq/queue/<queue> until <count> messages arrived and the queue is quiet, and
prints them as a JSON list: body (UTF-8 text), message id, correlation id, user id, content type
and encoding, application properties and message annotations, values typed as read_event_hub.py
types them. Proton reads AMQP 1.0 natively, so every section arrives as sent; a 0-9-1 client would
lose the application properties in RabbitMQ's protocol mapping.
"""

import json
import sys

from proton import Timeout, symbol
from proton.utils import BlockingConnection

from read_event_hub import typed

URL = "amqp://guest:guest@127.0.0.1:5672"


def fail(message):
    print(f"amqp_queue.py: {message}", file=sys.stderr)
    sys.exit(1)


def plain(value):
    if isinstance(value, symbol):
        return {"type": "symbol", "value": str(value)}
    return typed(value)


def main():
    command, queue = sys.argv[1], sys.argv[2]
    connection = BlockingConnection(URL, allowed_mechs="PLAIN", timeout=30)
    if command == "declare":
        # RabbitMQ 3.10 never answers a closing detach, so the connection is closed instead.
        connection.create_receiver(f"/queue/{queue}", credit=0)
        connection.close()
        return
    expected = int(sys.argv[3])
    receiver = connection.create_receiver(f"/amq/queue/{queue}", credit=100)
    messages = []
    while True:
        try:
            message = receiver.receive(timeout=30 if len(messages) < expected else 1)
        except Timeout:  # the queue is quiet
            break
        body = message.body
        body = bytes(body).decode("utf-8") if isinstance(body, (bytes, memoryview)) else str(body)
        messages.append({
            "body": body,
            "message_id": None if message.id is None else str(message.id),
            "correlation_id": None if message.correlation_id is None else str(message.correlation_id),
            "user_id": None if not message.user_id else bytes(message.user_id).decode("utf-8"),
            "content_type": None if message.content_type is None else str(message.content_type),
            "content_encoding": None if message.content_encoding is None else str(message.content_encoding),
            "properties": {str(k): plain(v) for k, v in (message.properties or {}).items()},
            "annotations": {str(k): plain(v) for k, v in (message.annotations or {}).items()},
        })
        receiver.accept()
    connection.close()
    if len(messages) < expected:
        fail(f"read {len(messages)} messages from {queue}, expected {expected}")
    print(json.dumps(messages))


if __name__ == "__main__":
    main()
