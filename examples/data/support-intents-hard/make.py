# ruff: noqa: E501
"""Writes pool.jsonl, test.jsonl and final.jsonl of support-intents-hard (see README.md).

Each situation below is written by hand: a true label a careful reader picks by what the customer asks
for, and the words of another intent that a keyword matcher (or a model that learnt keywords) follows.
Three fillings of its slots make three tickets; all tickets of one situation land in the same file, so
the test and final files hold situations the pool never showed. Run: python make.py (deterministic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ITEMS = [
    "blender",
    "desk lamp",
    "pair of boots",
    "phone case",
    "coffee grinder",
    "backpack",
    "kettle",
    "rain jacket",
    "keyboard",
    "air fryer",
    "bike helmet",
    "standing fan",
]
SHOPS = ["the bookshop app", "your online store", "the music service", "the grocery app", "your website"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "yesterday"]

# (true label, the intent whose words mislead, template)
SITUATIONS: list[tuple[str, str, str]] = [
    # billing_refund, dressed as something else
    (
        "billing_refund",
        "card_lost_stolen",
        "My card is safe in my wallet, nothing was stolen. I just want the {n} euros you charged twice for the {item} put back on it.",
    ),
    (
        "billing_refund",
        "fraud_report",
        "It wasn't fraud, it was me: I ordered the {item} twice by mistake on {day}. Please return the money for the second one.",
    ),
    (
        "billing_refund",
        "shipping_delay",
        "The {item} was so late that I bought one in a shop instead. It finally came {day}; I sent it back, now I'd like my {n} euros returned.",
    ),
    (
        "billing_refund",
        "cancel_subscription",
        "My plan is already cancelled, that part worked fine. But the last month of {n} was still taken after the cancellation date and I want it back.",
    ),
    (
        "billing_refund",
        "account_access",
        "I can log in fine now, thanks. While I was locked out you charged the {n} fee for a late payment I could not make. Please reverse that fee.",
    ),
    (
        "billing_refund",
        "product_defect",
        "The {item} works perfectly, no complaints about it. I was simply billed {n} instead of the sale price shown at checkout; refund the difference please.",
    ),
    (
        "billing_refund",
        "change_address",
        "No need to change where anything goes. You charged me a {n} delivery fee for a pickup-in-store order of a {item}, please pay that fee back.",
    ),
    (
        "billing_refund",
        "fraud_report",
        "Someone in my family used my login to buy an album on {shop}; I know who it was and it's sorted at home, I just need the {n} refunded.",
    ),
    (
        "billing_refund",
        "shipping_delay",
        "You promised express shipping for {n} extra and the {item} came by normal post a week later. I want the express charge back.",
    ),
    (
        "billing_refund",
        "card_lost_stolen",
        "I blocked my old card last month and you charged the replacement card {n} twice. Please give back the duplicate charge.",
    ),
    (
        "billing_refund",
        "cancel_subscription",
        "I don't want to cancel anything, I like the service. The price went up to {n} without notice this month; refund the increase.",
    ),
    (
        "billing_refund",
        "product_defect",
        "The {item} had a small scratch and you already offered a new one, but I'd honestly rather have my {n} back than a replacement.",
    ),
    # card_lost_stolen
    (
        "card_lost_stolen",
        "fraud_report",
        "No strange payments so far, I checked the whole statement. But my card went missing at the gym on {day}, please block it before anything happens.",
    ),
    (
        "card_lost_stolen",
        "billing_refund",
        "I don't need any money back. My purse was taken on the bus {day} with my debit card in it; freeze the card and send a new one.",
    ),
    (
        "card_lost_stolen",
        "shipping_delay",
        "Not asking about any parcel. I left my credit card in a taxi {day} and can't get it back; stop it and post a replacement.",
    ),
    (
        "card_lost_stolen",
        "account_access",
        "My online banking login is fine. It's the plastic card that's gone, I think it fell out of my pocket at the market. Cancel it please.",
    ),
    (
        "card_lost_stolen",
        "product_defect",
        "The card itself was working perfectly before I lost it at the airport {day}. Please block it and issue another.",
    ),
    (
        "card_lost_stolen",
        "change_address",
        "Please don't send anything to my old flat. My wallet was stolen {day} with the card in it; block the card, the new one can go to the same address as always.",
    ),
    (
        "card_lost_stolen",
        "cancel_subscription",
        "I'm not cancelling my account. I only want the card I misplaced on {day} stopped, and a new one issued.",
    ),
    (
        "card_lost_stolen",
        "fraud_report",
        "Every transaction on my statement is mine. But my card was pickpocketed at the concert {day} and I'm worried; lock it now.",
    ),
    (
        "card_lost_stolen",
        "billing_refund",
        "The {n} euro payment at the station was mine, that's where I last had the card. Since then it's gone. Block it please.",
    ),
    (
        "card_lost_stolen",
        "account_access",
        "I can still see my account in the app, but my card is nowhere to be found since {day}. Freeze it and order a new one.",
    ),
    (
        "card_lost_stolen",
        "shipping_delay",
        "My bag with my bank card was lost by the airline on {day}. It's not your fault, but please block the card until I know where it is.",
    ),
    (
        "card_lost_stolen",
        "product_defect",
        "The contactless chip was never the problem. I dropped the card somewhere in town {day}; cancel it and replace it.",
    ),
    # account_access
    (
        "account_access",
        "fraud_report",
        "I'm sure nobody hacked me, I just forgot which email I signed up with and now I can't get into my account. Help me log in.",
    ),
    (
        "account_access",
        "card_lost_stolen",
        "My card is in my hand, not lost. The problem is the app rejects my password since {day} and the reset link never arrives.",
    ),
    (
        "account_access",
        "billing_refund",
        "I don't want a refund, I want to see my invoices, but the site keeps saying my session expired every time I sign in.",
    ),
    (
        "account_access",
        "cancel_subscription",
        "I'd like to keep my subscription, but I can't log in to manage it: the two-factor code goes to a phone number I no longer have.",
    ),
    (
        "account_access",
        "shipping_delay",
        "The {item} arrived, all good. I just can't get into my account to write a review, it says my account is locked.",
    ),
    (
        "account_access",
        "change_address",
        "I need to update my address but that's not the issue: I can't even sign in, the verification email never comes.",
    ),
    (
        "account_access",
        "product_defect",
        "The {item} is fine. What's broken is your login page: it loops back to the start after I type the code.",
    ),
    (
        "account_access",
        "fraud_report",
        "No one else used my account. I typed the wrong password too many times on {day} and now it's blocked for 24 hours; can you unlock it?",
    ),
    (
        "account_access",
        "billing_refund",
        "The {n} charge is correct, I don't dispute it. I just can't reach my account to download the receipt because the password reset fails.",
    ),
    (
        "account_access",
        "card_lost_stolen",
        "I got a new phone and my authenticator app is gone, so I can't log in. My card and everything else are fine.",
    ),
    (
        "account_access",
        "cancel_subscription",
        "Before you suggest it, I'm not closing my account. I only need to be able to sign in again after changing my email on {day}.",
    ),
    (
        "account_access",
        "shipping_delay",
        "I want to track my order but I can't log in: the site says no account exists for my email, yet I ordered from it {day}.",
    ),
    # shipping_delay
    (
        "shipping_delay",
        "product_defect",
        "I can't tell you if the {item} works because it never showed up. It was due on {day} and tracking hasn't moved since.",
    ),
    (
        "shipping_delay",
        "billing_refund",
        "I'm not after my money, I still want the {item}. It's now two weeks late, where is it?",
    ),
    (
        "shipping_delay",
        "fraud_report",
        "The payment of {n} was mine and I'm happy to pay. I just want to know why my {item} is ten days past the delivery date.",
    ),
    (
        "shipping_delay",
        "change_address",
        "The address on the order is correct, nothing to change. The courier simply hasn't delivered the {item} that was due {day}.",
    ),
    (
        "shipping_delay",
        "cancel_subscription",
        "I don't want to cancel the order, I really need the {item}. Please tell me when it will finally arrive, it's a week overdue.",
    ),
    (
        "shipping_delay",
        "card_lost_stolen",
        "My card was charged fine, no issue there. The {item} was supposed to arrive {day} and is still sitting in a depot somewhere.",
    ),
    (
        "shipping_delay",
        "product_defect",
        "Nothing is broken as far as I know, the box just hasn't reached me. Ordered the {item} three weeks ago with 3-day delivery.",
    ),
    (
        "shipping_delay",
        "account_access",
        "I can log in and see the order says 'shipped' since {day}, but the {item} still hasn't come. What's going on?",
    ),
    (
        "shipping_delay",
        "billing_refund",
        "Keep the shipping fee, I don't care about {n} euros. I care that the {item} for my daughter's birthday hasn't arrived.",
    ),
    (
        "shipping_delay",
        "change_address",
        "I moved last year and the order shows the new address, which is right. It's just stuck 'in transit' since {day}.",
    ),
    (
        "shipping_delay",
        "fraud_report",
        "It's not a scam I hope, but the tracking number for my {item} has shown no movement for twelve days. When will it be delivered?",
    ),
    (
        "shipping_delay",
        "cancel_subscription",
        "My monthly box normally arrives on the 1st. This month it's the 12th and nothing. I'm not cancelling, just send it.",
    ),
    # cancel_subscription
    (
        "cancel_subscription",
        "billing_refund",
        "I'm fine paying for this month, no refund needed. Just make sure the plan stops and doesn't renew after that.",
    ),
    (
        "cancel_subscription",
        "fraud_report",
        "Nobody stole anything, I signed up myself for the {n} a month plan on {shop}. I've changed my mind: end it before the next billing date.",
    ),
    (
        "cancel_subscription",
        "account_access",
        "I can log in without trouble, but I can't find where to stop my membership. Please close it for me.",
    ),
    (
        "cancel_subscription",
        "product_defect",
        "The service works well, nothing wrong with it. I'm moving abroad and want to stop my subscription from next month.",
    ),
    (
        "cancel_subscription",
        "shipping_delay",
        "The boxes always come on time, that's not it. I just don't need the weekly meal kit anymore; please end it.",
    ),
    (
        "cancel_subscription",
        "card_lost_stolen",
        "Don't touch my card, it's fine. I only want the premium plan switched off so it stops charging it.",
    ),
    (
        "cancel_subscription",
        "change_address",
        "I'm moving house on {day}, and rather than change the delivery address I'd like to stop the magazine subscription entirely.",
    ),
    (
        "cancel_subscription",
        "billing_refund",
        "You can keep what I've already paid. From now on, no more renewals: terminate the annual plan.",
    ),
    (
        "cancel_subscription",
        "account_access",
        "Please delete my membership, I won't be logging in again. Access is not the issue, I just don't use it.",
    ),
    (
        "cancel_subscription",
        "fraud_report",
        "The monthly {n} charge is legitimate, I agreed to it. I just don't want it any more from next month on.",
    ),
    (
        "cancel_subscription",
        "product_defect",
        "The {item} from my monthly box was great. Still, I'm on a budget now and need to end the subscription.",
    ),
    (
        "cancel_subscription",
        "shipping_delay",
        "Instead of asking where this month's delivery is, let's just stop the subscription after it arrives.",
    ),
    # product_defect
    (
        "product_defect",
        "billing_refund",
        "I don't want my money back, I want a working {item}. It stopped turning on after two days; please repair or replace it.",
    ),
    (
        "product_defect",
        "shipping_delay",
        "It arrived right on time on {day}, but the {item} is cracked along the side. Can you send a replacement?",
    ),
    (
        "product_defect",
        "fraud_report",
        "No fraud here, the order is genuine. But the {item} makes a burning smell after five minutes; what do I do under warranty?",
    ),
    (
        "product_defect",
        "cancel_subscription",
        "I'm keeping my membership. The {item} that came with it has a broken switch, please fix or swap it.",
    ),
    (
        "product_defect",
        "card_lost_stolen",
        "The card reader you sent me won't read any card, mine or my husband's. The device seems faulty; send another.",
    ),
    (
        "product_defect",
        "change_address",
        "Same address as before is fine for the replacement. The {item} I got leaks water from the bottom.",
    ),
    (
        "product_defect",
        "account_access",
        "I can log in to the companion app fine, but the {item} itself won't pair and its light just blinks red. Looks defective.",
    ),
    (
        "product_defect",
        "billing_refund",
        "The {n} euros I paid is fair, I'm not asking for it back. The zip on the {item} broke the first time I used it; please replace it.",
    ),
    (
        "product_defect",
        "shipping_delay",
        "Delivery was quick, no complaints. Sadly the {item} has a dead pixel line right across the display. Warranty exchange please.",
    ),
    (
        "product_defect",
        "fraud_report",
        "I thought it might be a fake because it feels so cheap, but it's from your store: the {item}'s handle snapped off. Please send a new one.",
    ),
    (
        "product_defect",
        "cancel_subscription",
        "Don't cancel my order or my plan. I only need the {item} that stopped working to be repaired.",
    ),
    (
        "product_defect",
        "card_lost_stolen",
        "My card works everywhere else, but the new payment ring you sold me doesn't register at any terminal. It must be broken.",
    ),
    # change_address
    (
        "change_address",
        "shipping_delay",
        "The {item} isn't late yet, it's due next week. But I've moved, so please send it to my new flat instead of the old one.",
    ),
    (
        "change_address",
        "cancel_subscription",
        "Don't cancel the magazine, I just moved. Please update the delivery address to my new place from next issue.",
    ),
    (
        "change_address",
        "billing_refund",
        "No refund needed. I typed the wrong house number on the order for the {item}; can you correct it to 14 before it ships?",
    ),
    (
        "change_address",
        "fraud_report",
        "Nothing suspicious, I just moved in with my partner on {day}. Update my billing and shipping address to her place please.",
    ),
    (
        "change_address",
        "account_access",
        "I can log in, but the address field is greyed out. Please change my address on file to the new one for me.",
    ),
    (
        "change_address",
        "card_lost_stolen",
        "Please send the replacement card you already issued to my new address, not the old one; I moved out on {day}.",
    ),
    (
        "change_address",
        "product_defect",
        "The {item} is fine. I just need the next order delivered to my office instead of my home.",
    ),
    (
        "change_address",
        "shipping_delay",
        "Since the parcel hasn't left the warehouse yet, could you redirect it to my parents' house? I'll be there from {day}.",
    ),
    (
        "change_address",
        "cancel_subscription",
        "Rather than cancelling when I move, I'd like to keep the weekly box and just have it go to the new flat.",
    ),
    (
        "change_address",
        "billing_refund",
        "The {n} invoice is correct, but it shows my old street. Update my address so future invoices are right.",
    ),
    (
        "change_address",
        "fraud_report",
        "I got a letter meant for me at my old address, all fine, but please update my details to where I live now.",
    ),
    (
        "change_address",
        "account_access",
        "My login works, I just can't find where to edit my postcode. It's wrong since I moved; please fix it.",
    ),
    # fraud_report
    (
        "fraud_report",
        "billing_refund",
        "There are three payments of {n} on my statement from a shop I've never heard of. I didn't buy anything there; someone is using my card.",
    ),
    (
        "fraud_report",
        "card_lost_stolen",
        "My card has never left my wallet, yet there's a cash withdrawal in another country on {day}. Someone copied it.",
    ),
    (
        "fraud_report",
        "account_access",
        "I can still log in, but someone changed my email and ordered a {item} from my account that I never asked for.",
    ),
    (
        "fraud_report",
        "shipping_delay",
        "I got a tracking email for a {item} I never ordered, paid with my saved card. I didn't buy this, please investigate.",
    ),
    (
        "fraud_report",
        "cancel_subscription",
        "There's a subscription of {n} a month on my card for a service I never signed up for. Someone else did this.",
    ),
    (
        "fraud_report",
        "change_address",
        "Someone changed the delivery address on my account to a place I don't know and placed an order. That wasn't me.",
    ),
    (
        "fraud_report",
        "product_defect",
        "The charge for a {item} on {day} wasn't mine; I never received or ordered anything like it.",
    ),
    (
        "fraud_report",
        "billing_refund",
        "I see a {n} euro payment to {shop} that I definitely didn't make. I think my card details were stolen online.",
    ),
    (
        "fraud_report",
        "card_lost_stolen",
        "I still have the card with me, but there are contactless payments in a town I've never been to. Report this as unauthorised.",
    ),
    (
        "fraud_report",
        "account_access",
        "I got a message that my password was changed on {day}, but I didn't change it. Someone else is in my account.",
    ),
    (
        "fraud_report",
        "shipping_delay",
        "Someone used my account to send gift cards to a stranger. I never placed those orders and I want it investigated.",
    ),
    (
        "fraud_report",
        "cancel_subscription",
        "A premium upgrade was bought on my account at 3 a.m. I was asleep and I didn't authorise it.",
    ),
]

PARTS = (("pool.jsonl", 0.5), ("test.jsonl", 0.3), ("final.jsonl", 0.2))
FILLINGS = 3


def tickets(seed: int = 23) -> dict[str, list[dict[str, str]]]:
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, (label, _, _) in enumerate(SITUATIONS):
        by_label.setdefault(label, []).append(i)
    part_of: dict[int, str] = {}
    for ids in by_label.values():  # every label in every part, in the same shares
        rng.shuffle(ids)
        cut1, cut2 = round(PARTS[0][1] * len(ids)), round((PARTS[0][1] + PARTS[1][1]) * len(ids))
        for j, i in enumerate(ids):
            part_of[i] = PARTS[0][0] if j < cut1 else PARTS[1][0] if j < cut2 else PARTS[2][0]
    out: dict[str, list[dict[str, str]]] = {name: [] for name, _ in PARTS}
    for i, (label, lure, template) in enumerate(SITUATIONS):
        seen = set()
        for _ in range(FILLINGS * 4):
            text = template.format(
                item=rng.choice(ITEMS),
                shop=rng.choice(SHOPS),
                day=rng.choice(DAYS),
                n=rng.choice([9, 12, 15, 30, 49, 89]),
            )
            if text not in seen:
                seen.add(text)
                out[part_of[i]].append({"text": text, "label": label, "lure": lure, "situation": str(i)})
            if len(seen) == FILLINGS:
                break
    for rows in out.values():
        rng.shuffle(rows)
    return out


def main() -> None:
    here = Path(__file__).parent
    for name, rows in tickets().items():
        (here / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(name, len(rows))


if __name__ == "__main__":
    main()
