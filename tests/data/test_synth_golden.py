"""generate_case draws the same cases to the pixel: sha256 digests of its outputs for fixed inputs.

The digests were computed from the generator as it stood before its steps were named (issue 27),
so a refactor of ``zoomdx_lib/data/synth.py`` that changes one pixel, one mask pixel, one box
coordinate, one label or one latent value fails here. They hold for this numpy / scipy build on
this kind of CPU (float32 FFTs and transcendental functions may round differently elsewhere; the
boxes and labels, drawn in float64 from the seeded generator, do not). To re-pin after an intended
change of the pictures: ``python tests/data/test_synth_golden.py`` prints the new table.
"""
import hashlib
import json

import numpy as np
import pytest

from zoomdx_lib.data.synth import generate_case

# (seed, organ, size, attribute_classes as (attribute, class) pairs, detail_scale): every organ and
# probe, sizes that are and are not multiples of 28 or 256, forced classes that reach the anechoic,
# shadowing, isoechoic (texture), irregular and not-circumscribed branches, and the native-margin
# path (detail_scale set).
CASES = [
    (0, "liver", 256, None, None),
    (1, "liver", 256, None, None),
    (7, "liver", 96, None, None),
    (123, "liver", 300, None, None),
    (0, "breast", 256, None, None),
    (5, "breast", 128, None, None),
    (0, "thyroid", 256, None, None),
    (9, "thyroid", 224, None, None),
    (2, "liver", 256, (("echo", "Anechoic"),), None),
    (3, "breast", 256, (("echo", "Hyperechoic"),), None),
    (4, "thyroid", 256, (("echo", "Isoechoic"),), None),
    (6, "liver", 256, (("echo", "Hypoechoic"), ("shape", "Irregular"), ("margin", "Not circumscribed")), None),
    (8, "breast", 192, (("shape", "Round"), ("margin", "Circumscribed")), None),
    (10, "breast", 512, (("margin", "Not circumscribed"),), 1.0),
    (11, "liver", 384, None, 1.0),
    (12, "thyroid", 256, (("echo", "Isoechoic"),), 2.0),
]


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def draw(key):
    """generate_case for one entry of CASES."""
    seed, organ, size, forced, detail = key
    return generate_case(seed, organ, size, dict(forced) if forced else None, detail)


def fingerprint(case) -> dict:
    """The case as digests (image, mask, field of view; latent values, difficulty and meta, floats by
    repr) and plain values (box in output pixels, true classes)."""
    numbers = json.dumps(dict(latent=case.latent, difficulty=case.difficulty, seed=case.seed, organ=case.organ,
                              meta={k: repr(v) for k, v in sorted(case.meta.items())}), sort_keys=True)
    return dict(image=_sha(case.image), mask=_sha(case.mask), fov=_sha(case.fov),
                numbers=hashlib.sha256(numbers.encode()).hexdigest(),
                box=tuple(case.box), attributes=dict(case.attributes))


# Computed from generate_case before its refactor into named steps; do not edit by hand.
GOLDEN = {
    (0, 'liver', 256, None, None): dict(
        image='207a5f264a1c2278d4b36bfee9022df1ee6e3d3795272cb8cec8ed9967637b57',
        mask='58ad7a36936398945bd6030c4806ddf22e28fe35acb732ddaaa34524110327da',
        fov='bd132a0e03e6f540d3e15d3cebb769f542122c33ac578f94bbeca5a9a796889c',
        numbers='c3632fad064545b623d206868d5e37d6d705954d7e0286169507ddebab7e9547',
        box=(97.0, 129.0, 163.0, 168.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Oval', 'margin': 'Circumscribed'},
    ),
    (1, 'liver', 256, None, None): dict(
        image='c524205ac31e4c4144af40fe24c00eddc08b0e03588a62cd2e61faf910bd9c69',
        mask='ed8275466eac431d72e7f04724c7ca0a0c98c20d150ccd0a3ef1ddaa60440a1b',
        fov='bd132a0e03e6f540d3e15d3cebb769f542122c33ac578f94bbeca5a9a796889c',
        numbers='b389e58abfe446a3905c52840ee93531e2f13829d672eab1b6bde80bcfcbb8a5',
        box=(103.0, 65.0, 150.0, 100.0),
        attributes={'echo': 'Hyperechoic', 'shape': 'Irregular', 'margin': 'Circumscribed'},
    ),
    (7, 'liver', 96, None, None): dict(
        image='3dc1728f1ed3c65b2f3310cf37f268b4fc858abc17a1689ff84b4135b2d26aaa',
        mask='153f1de20bc040fc887bc0b2f3b419a4627cd968d3b58bd0f1d37cd2ffe823c6',
        fov='054fa2a7cf3090d34e222a0f302160b8c6a8dd763ac8cb08addb345b24821fae',
        numbers='3777f051de0e0549f4dd6cede26f7a4169281b28fdd2b5ba14dd819e6aa2c02d',
        box=(23.0, 38.0, 45.0, 57.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Irregular', 'margin': 'Not circumscribed'},
    ),
    (123, 'liver', 300, None, None): dict(
        image='274d3189fba86cff6fa4cf5cef410dbb22b278f903a1482280e0c312b1eb80ff',
        mask='3514a559c232c97c6fa051dde2e2acd14a6046aced791c1ce80a6ff460ed787f',
        fov='37909348f0a5a511d89ee4c347afffbd77cf3f3554e2bd8dfa1a11fe4f8c089a',
        numbers='13878df513db56997d71c4efec3d7b7255dce6d57825f88b4f5abcc495d1c40e',
        box=(195.0, 163.0, 240.0, 200.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Oval', 'margin': 'Not circumscribed'},
    ),
    (0, 'breast', 256, None, None): dict(
        image='2177f002414c900e84d5fc7b0e1a556aa8710830cdbe22730a2cf2f4444061aa',
        mask='c4d9c668ba477c75f767a4a13a38a2c23b5feff09938f00ccd224172ac2de0df',
        fov='1ecffeb390b8f2752b683c633ae0695e2d1fc3851d7e0d8f187e706564f5da24',
        numbers='75b156c53816f8746150bc3c03034cd85d3eb2f9040926d41e1187fe0c848a73',
        box=(133.0, 134.0, 199.0, 173.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Oval', 'margin': 'Circumscribed'},
    ),
    (5, 'breast', 128, None, None): dict(
        image='777dd59621294fccec30bf685982736f9140ad6b634b56006cd4d79ec220d849',
        mask='6e067da6060bf36f73d62a9304335ea12274a9a030f8a3df4ef08b2f1f57fa59',
        fov='b46a1ce18d54fa178a8f4f49717a3c6b362061ee7a2d5e393b350fa69c75997b',
        numbers='01ea27c96023d0fedddcc14aaba6ad4132464351034a4ac28c974d956acdace2',
        box=(58.0, 63.0, 73.0, 78.0),
        attributes={'echo': 'Anechoic', 'shape': 'Irregular', 'margin': 'Circumscribed'},
    ),
    (0, 'thyroid', 256, None, None): dict(
        image='fff3fc6a0bd04347541fa1040567269eeb0d0a55bd2e4899bff4adb918a23087',
        mask='0e3ae64f778b8381818122f0de83683805721136662c2f273c84e692fe208725',
        fov='1ecffeb390b8f2752b683c633ae0695e2d1fc3851d7e0d8f187e706564f5da24',
        numbers='40807775481dc815067c88d9f4aa794235ca4827bd511df194d73a6fe8d16bdf',
        box=(133.0, 137.0, 199.0, 177.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Oval', 'margin': 'Circumscribed'},
    ),
    (9, 'thyroid', 224, None, None): dict(
        image='f006688b1816f2da48d1fc41054b8de83fc54158cf5e1b7740dab56388112c68',
        mask='287509af7fc23190ef431ebe75e3d5a6989d9d2559f04aec680a68b047c7b89c',
        fov='89074abd139e3587e9df00acda7698a9b61df7880d9459682cef5b0b3889ea7a',
        numbers='9aab52aa4aa1cc2f463f59407de4abc97b3da5359aa2ed570849136d7ca0d9e8',
        box=(120.0, 103.0, 180.0, 141.0),
        attributes={'echo': 'Hyperechoic', 'shape': 'Oval', 'margin': 'Circumscribed'},
    ),
    (2, 'liver', 256, (('echo', 'Anechoic'),), None): dict(
        image='ef18e56fee9c568d3a3b04062d19b405bc4ffca182da62cb79b14ab06c4f8344',
        mask='45a93f90dd0dc0290046ca91daa9c785a8ef14aedcc6337c2eca0db991299738',
        fov='bd132a0e03e6f540d3e15d3cebb769f542122c33ac578f94bbeca5a9a796889c',
        numbers='d37f276e213cdd683baa574c09622bd0ac75ee5d9f95b721f37dfb19f1ec0d1e',
        box=(156.0, 101.0, 194.0, 130.0),
        attributes={'echo': 'Anechoic', 'shape': 'Oval', 'margin': 'Circumscribed'},
    ),
    (3, 'breast', 256, (('echo', 'Hyperechoic'),), None): dict(
        image='effbd3b6a2035dbd4a0fed5cec6b09e0b5c84574f6fee46244128b6db7d15640',
        mask='566089e04ce6a5335f2c15c2db23a51c8ddca2c31f6454723cd85a20bc6649c5',
        fov='1ecffeb390b8f2752b683c633ae0695e2d1fc3851d7e0d8f187e706564f5da24',
        numbers='1af3e9465de66f18eb11fc7a8005972df0a6f09c29b1095293ae1c9fbbabd9c0',
        box=(134.0, 167.0, 191.0, 201.0),
        attributes={'echo': 'Hyperechoic', 'shape': 'Oval', 'margin': 'Circumscribed'},
    ),
    (4, 'thyroid', 256, (('echo', 'Isoechoic'),), None): dict(
        image='ae6afcfb1fe4bf3f7d1de7171a6f782ffe4747ac18de0bc9b3263bf03beb8614',
        mask='429181c65f23ab784e10a0fafa377440b21419e1abadfc5083d6f4638c0ccdf0',
        fov='1ecffeb390b8f2752b683c633ae0695e2d1fc3851d7e0d8f187e706564f5da24',
        numbers='072d7b8450f309a22b8d35f5438d48160d5366a1e809c96d935308e9d074273b',
        box=(49.0, 145.0, 111.0, 200.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Irregular', 'margin': 'Not circumscribed'},
    ),
    (6, 'liver', 256, (('echo', 'Hypoechoic'), ('shape', 'Irregular'), ('margin', 'Not circumscribed')), None): dict(
        image='8a36a3738dda5a7065e14fdc94c91f8b204cb9453dd12fab1b8e2b6bcc206eb7',
        mask='efc58a731b44055e4fa5edaa0ad6e39894614376f2eddafc52d85bce08cd0bb2',
        fov='bd132a0e03e6f540d3e15d3cebb769f542122c33ac578f94bbeca5a9a796889c',
        numbers='8b004202bd629297d3b90f5174021dffae1937c747f8700858e814a998b8c638',
        box=(37.0, 139.0, 95.0, 174.0),
        attributes={'echo': 'Hypoechoic', 'shape': 'Irregular', 'margin': 'Not circumscribed'},
    ),
    (8, 'breast', 192, (('shape', 'Round'), ('margin', 'Circumscribed')), None): dict(
        image='34734fef0339a7bebedb1d298d83f2e07f34eb878ea25e55b736964de2817f01',
        mask='59b073767f3c658705b5ff94a54b5f63b7e8817c123816542d484e33047246f7',
        fov='bf42bf903c7f5504642b77fc02b5fc19bc5389e90e5c0b6a9f382bf4d2a5954b',
        numbers='192e70b3a3fcdf1278f1799876609e0f12961625d75a511a98ce579bb9a6524e',
        box=(106.0, 72.0, 143.0, 102.0),
        attributes={'echo': 'Anechoic', 'shape': 'Round', 'margin': 'Circumscribed'},
    ),
    (10, 'breast', 512, (('margin', 'Not circumscribed'),), 1.0): dict(
        image='0c8b72d7409f134a7170e8caa7dac22c447f464a679f61acb921451ebab1190a',
        mask='76580ab00851e7f4c6cb2c9590f3d72dd85d99e9939044a04561e2eb68ea5591',
        fov='3dd20bc2d15464a30c109874d0ed599fa4988a32c32d5077834decaf9d8c9c3b',
        numbers='9b13e7225d446f3c486f073554b774f5ddf3497aa327b34ecefc6119ffe90b97',
        box=(51.0, 217.0, 186.0, 316.0),
        attributes={'echo': 'Hypoechoic', 'shape': 'Oval', 'margin': 'Not circumscribed'},
    ),
    (11, 'liver', 384, None, 1.0): dict(
        image='509f8270848c5d8b61316ad42a1b35989db2cf8812d9e0aac96c80b78a99644f',
        mask='d3fff4c71890f9016ffec36f7ef34a1b8cbd2dc6ab00649a2eedf3f1b7cd0a1c',
        fov='a7686e5db481be655d5e5f7c2603dfd883ea86c35d0e02b600ed3527b4000bc1',
        numbers='d9ba381e0b3c49eda599d2a2a0a7fc3c409cac7bc648016798ba7dd653d2f441',
        box=(185.0, 190.0, 239.0, 241.0),
        attributes={'echo': 'Hyperechoic', 'shape': 'Round', 'margin': 'Not circumscribed'},
    ),
    (12, 'thyroid', 256, (('echo', 'Isoechoic'),), 2.0): dict(
        image='a001def1182db9b256de91e2c5f9ceb23bb7f78317c868490716b77ef5e7ce1c',
        mask='6590ec9fd6bb4670df172df5524449c0526b7be85f1ea4c89a9d0adb5e7063d6',
        fov='1ecffeb390b8f2752b683c633ae0695e2d1fc3851d7e0d8f187e706564f5da24',
        numbers='8cbdcddb58d4c2088138838972d80c1283e13bb34e33742439cec009a29ba918',
        box=(36.0, 89.0, 113.0, 147.0),
        attributes={'echo': 'Isoechoic', 'shape': 'Irregular', 'margin': 'Not circumscribed'},
    ),
}


def _id(key) -> str:
    seed, organ, size, forced, detail = key
    return "-".join([organ, f"s{seed}", f"{size}px", *(c for _, c in forced or ()), *([f"k{detail}"] if detail else [])])


def test_every_case_is_pinned():
    assert list(GOLDEN) == CASES


@pytest.mark.parametrize("key", CASES, ids=_id)
def test_generate_case_is_unchanged_to_the_pixel(key):
    got, want = fingerprint(draw(key)), GOLDEN[key]
    differs = [name for name in want if got[name] != want[name]]
    assert not differs, f"generate_case{key} changed its {differs}"


if __name__ == "__main__":
    print("GOLDEN = {")
    for key in CASES:
        print(f"    {key!r}: dict(")
        for name, value in fingerprint(draw(key)).items():
            print(f"        {name}={value!r},")
        print("    ),")
    print("}")
