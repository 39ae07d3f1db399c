"""A Flower grid without Ray: each message goes to the ClientApp in the test's own process. Tests of what a round
computes (aggregation rules, defences, DP, what travels) run through it in seconds; tests of the engines themselves
(simulation, deployment) start the real ones."""

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE = 101


class InProcessGrid:
    """Nodes ``101 .. 100 + nodes``, node ``101 + k`` being the simulated client ``partition-id`` k; every message both
    ways is kept (``sent``, ``replies``)."""

    def __init__(self, app, run_config: dict, nodes: int):
        self.app, self.run_config, self.nodes, self.sent, self.replies = app, run_config, nodes, [], []
        # what Flower's runtime sets before messages are built
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    def get_node_ids(self):
        return list(range(FIRST_NODE, FIRST_NODE + self.nodes))

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            partition = message.metadata.dst_node_id - FIRST_NODE
            node_config = {"partition-id": partition, "num-partitions": self.nodes}
            context = Context(
                run_id=1,
                node_id=message.metadata.dst_node_id,
                node_config=node_config,
                state=RecordDict(),
                run_config=self.run_config,
            )
            message.metadata.__dict__["_message_id"] = f"m{partition}"
            TaskIdentity.node_id = message.metadata.dst_node_id  # the client's process
            replies.append(self.app(message, context))
            TaskIdentity.node_id = SUPERLINK_NODE_ID
            self.sent.append(message)
        self.replies += replies
        return replies
