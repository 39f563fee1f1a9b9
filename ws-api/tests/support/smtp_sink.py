"""A real SMTP server for the mail tests (aiosmtpd, installed by .ci/run).

Usage: smtp_sink.py DIR PORT [--hold-first]

Accepts every message on 127.0.0.1:PORT and saves it to DIR as <n>.json (written whole,
then renamed): its envelope, its headers and its decoded text. With --hold-first, the first
message is saved and then its final reply is withheld for a minute: a server that received
the data but whose "250" the client never sees. Prints "ready" once it listens.
"""

import asyncio
import email
import email.policy
import json
import os
import sys
import time

from aiosmtpd.controller import Controller


class Saver:
    def __init__(self, directory, hold_first):
        self.directory = directory
        self.hold_first = hold_first
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        number = self.count
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "message_id": message["Message-ID"],
            "subject": message["Subject"],
            "to": message["To"],
            "text": body.get_content() if body is not None else "",
        }
        path = os.path.join(self.directory, f"{number}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.rename(path + ".tmp", path)
        if self.hold_first and number == 1:
            await asyncio.sleep(60)
        return "250 Message accepted"


def main():
    directory, port = sys.argv[1], int(sys.argv[2])
    hold_first = "--hold-first" in sys.argv[3:]
    controller = Controller(Saver(directory, hold_first), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
