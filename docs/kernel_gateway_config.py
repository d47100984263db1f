"""Jupyter Kernel Gateway config: send kernel websocket frames without Nagle's delay.

    jupyter kernelgateway --config=docs/kernel_gateway_config.py ...

The stock gateway leaves Nagle's algorithm on for the kernel websocket: a reply is several
small frames (status busy, execute_input, execute_result, status idle, execute_reply) and
every frame after the first waits for the client's delayed ACK, about 40 ms per round trip.
TCP_NODELAY sends each frame at once. Needs nothing but jupyter_server (which the gateway
is built on).
"""

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayChannelsConnection(ZMQChannelsWebsocketConnection):
    """The stock connection, with TCP_NODELAY set when the websocket opens."""

    def connect(self):
        self.websocket_handler.set_nodelay(True)
        return super().connect()


c = get_config()  # noqa: F821 - provided by traitlets when it loads this file
c.KernelGatewayApp.kernel_websocket_connection_class = NoDelayChannelsConnection
# Death is noticed by polling the kernel process: every 3 s by default.
c.KernelRestarter.time_to_dead = 1.0
