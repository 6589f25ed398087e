"""The built images (``make images``), each as a working container's rootfs for tests/image_runner.py.

Locally a missing image skips its tests with the reason; CI sets KUBETUNE_REQUIRE_IMAGES=1 and builds
the images first, so there a missing image fails. Package-scoped: each working container is a whole
vfs copy of its image (6.3 GB for the trainer), removed once tests/images is done, not at session end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from image_runner import OPERATOR_IMAGE, TRAINER_IMAGE, Image, mounted_image, require_image


@pytest.fixture(scope="package")
def operator_image() -> Iterator[Image]:
    require_image(OPERATOR_IMAGE)
    with mounted_image(OPERATOR_IMAGE) as image:
        yield image


@pytest.fixture(scope="package")
def trainer_image() -> Iterator[Image]:
    require_image(TRAINER_IMAGE)
    with mounted_image(TRAINER_IMAGE) as image:
        yield image
