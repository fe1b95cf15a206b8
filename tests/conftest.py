"""Test-session set-up.

torchvision (through torch._dynamo) crashes with a segmentation fault when it is first imported
after TensorFlow in the same process; importing it before any test can import TensorFlow keeps
the suite independent of test order.
"""
try:
    import torchvision  # noqa: F401
except ImportError:  # the suite still runs the tests that do not need it
    pass
