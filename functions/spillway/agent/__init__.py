"""The agent that runs beside each GPU's model server: `spillway agent`."""
