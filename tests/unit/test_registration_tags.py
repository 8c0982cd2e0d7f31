"""The tags a host registers with: az from pillar or grains, the region a zone name implies."""

import pytest
from envoy_formula import discovery_registration as registration
from envoy_formula.errors import EnvoyFormulaError


@pytest.mark.parametrize(("az", "region"), [
    ("us-east-1a", "us-east-1"),        # AWS
    ("eu-central-1c", "eu-central-1"),
    ("europe-west1-b", "europe-west1"),  # GCP
    ("lab-1a", "lab-1"),
    ("lab-a", "lab-a"),                 # no region number: the zone is its own region
    ("dc1", "dc1"),
    ("rack", "rack"),
])
def test_the_region_a_zone_name_implies(az, region):
    assert registration.tags({"tags": {"az": az}}, {"id": "web1"})["region"] == region


def test_pillar_tags_win_over_grains_and_derivation():
    tags = registration.tags({"tags": {"az": "lab-a", "region": "lab"}}, {"region": "other", "id": "web1"})
    assert tags == {"az": "lab-a", "region": "lab", "instance_id": "web1"}
    assert registration.tags({}, {"zone": "us-west-2b", "id": "web2"})["region"] == "us-west-2"


def test_no_zone_anywhere_is_an_error_naming_the_pillar_key():
    with pytest.raises(EnvoyFormulaError, match="envoy:discovery:register:tags:az"):
        registration.tags({}, {"id": "web1"})
