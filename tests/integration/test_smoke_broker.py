"""Smoke test: the broker from scripts/testenv is a real RabbitMQ that keeps persistent messages
in durable queues across a restart (what the workers' at-least-once delivery relies on)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aio_pika


async def test_persistent_message_survives_a_broker_restart(
    amqp_url: str, broker_restart: Callable[[], float]
) -> None:
    queue_name = f"smoke.durable.{uuid.uuid4().hex[:10]}"
    body = f"persistent {queue_name}".encode()

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, durable=True)
        # confirmed by the broker before publish returns
        await channel.default_exchange.publish(
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=queue_name,
            ),
            routing_key=queue.name,
        )
        # a transient message in the same queue, for contrast
        await channel.default_exchange.publish(
            aio_pika.Message(b"transient", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
            routing_key=queue.name,
        )

    took = await asyncio.to_thread(broker_restart)
    assert took > 0

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        try:
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            assert message is not None, "the persistent message was lost in the restart"
            assert message.body == body
            assert message.message_id == queue_name
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            await message.ack()
            # the transient one did not survive the restart
            assert await queue.get(no_ack=True, fail=False, timeout=5) is None
        finally:
            await queue.delete(if_unused=False, if_empty=False)

