"""Training: ControlNets as the paper describes (controlnet.py) and the embedded base (base.py)."""
