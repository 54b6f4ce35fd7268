import os
def test_s():
    assert os.environ['PYTEST_XDIST_WORKER'] == 'gw0'
