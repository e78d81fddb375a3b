"""The text front-end: per language, input -> spoken text pairs written from that language's conventions
(not produced by the code); the Hindi number table against CLDR; properties (never raises, idempotent,
letters kept); the runtime and CLI speak the normalized text, and --raw / normalize=False the text as
written; the prompt of a normalized text is mistral-common's."""

from __future__ import annotations

import json
import re
import string
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxtral_edge.cli import main
from voxtral_edge.text import LANGUAGES, normalize, voice_language
from voxtral_edge.text.numbers import hindi_cardinal

# -- per-language tables -----------------------------------------------------------------------------------
# Each covers: cardinals, decimals and grouping, negatives, ordinals, percentages, ranges, money (symbol before
# and after, cents), units (singular/plural, gender), times, dates (ISO, d/m/y, d.m.y), roads and exits,
# abbreviations, markdown, HTML, URLs, emoji, invisible characters, line breaks, repeated and final punctuation.
ZWSP, NNBSP = "\u200b", "\u202f"

EN = [  # British English: "metres", "one hundred and thirty"; street suffixes as in USPS Publication 28
    ("Turn left in 200 m.", "Turn left in two hundred metres."),
    ("Only 1 km to go", "Only one kilometre to go."),
    ("The limit is 130 km/h.", "The limit is one hundred and thirty kilometres per hour."),
    ("Drive 60 mph for 3 mi.", "Drive sixty miles per hour for three miles."),
    ("Clearance 1 ft, then 12 ft.", "Clearance one foot, then twelve feet."),
    ("It is -3 °C outside and 27 °F inland.", "It is minus three degrees Celsius outside and twenty-seven degrees "
                                              "Fahrenheit inland."),
    ("Battery at 85 %, range 1.5 km.", "Battery at eighty-five percent, range one point five kilometres."),
    ("Charging at 50 kW added 12.5 kWh.", "Charging at fifty kilowatts added twelve point five kilowatt hours."),
    ("Fill 40 L in 5 min, then 1 h of driving.", "Fill forty litres in five minutes, then one hour of driving."),
    ("Parking costs €12.50 or $3, and £0.75.", "Parking costs twelve euros and fifty cents or three dollars, and "
                                               "seventy-five pence."),
    ("It costs 5 € or ¥500 or ₹1,200.", "It costs five euros or five hundred yen or one thousand two hundred "
                                        "rupees."),
    ("Take the 1st exit, then the 2nd, 3rd and 21st.", "Take the first exit, then the second, third and "
                                                       "twenty-first."),
    ("Arrive at 14:30 or 2:30 pm, not 9:05 am.", "Arrive at fourteen thirty or two thirty p.m., not nine oh five "
                                                 "a.m."),
    ("Leave at 7 pm.", "Leave at seven p.m."),
    ("Due 2026-11-29, renewed 29/11/2026.", "Due the twenty-ninth of November twenty twenty-six, renewed the "
                                            "twenty-ninth of November twenty twenty-six."),
    ("Expires 01.03.2027.", "Expires the first of March twenty twenty-seven."),
    ("Join the M25, then the A7, I-95 and E40.", "Join the M twenty-five, then the A seven, I ninety-five and E "
                                                 "forty."),
    ("Take exit 12a.", "Take exit twelve A."),
    ("Meet Dr. Smith at 221 Baker St.", "Meet Doctor Smith at two hundred and twenty-one Baker Street."),
    ("Continue on Oak Ave. past St. Mary's to Elm Rd.", "Continue on Oak Avenue past Saint Mary's to Elm Road."),
    ("There are 1,234,567 cars and 10-12 lanes.", "There are one million two hundred and thirty-four thousand five "
                                                  "hundred and sixty-seven cars and ten to twelve lanes."),
    ("## Route\n- Turn **left**\n- Then [merge](https://x.example/a) right", "Route. Turn left. Then merge right."),
    ("<p>Traffic &amp; roadworks</p><br>Slow down", "Traffic and roadworks. Slow down."),
    ("See https://maps.example.com/r?id=7 for details 🚗👍🏽", "See link for details."),
    (f"Keep{ZWSP} right\nafter the bridge", "Keep right after the bridge."),
    ("Watch out!!! Really??", "Watch out! Really?"),
    ("Pi is 3.14", "Pi is three point one four."),
    ("Call 0800 now", "Call zero eight zero zero now."),
    ("Mr. Jones is here", "Mister Jones is here."),
]

FR = [
    ("Dans 200 m, tournez à droite.", "Dans deux cents mètres, tournez à droite."),
    ("Encore 1 km.", "Encore un kilomètre."),
    ("Vitesse limitée à 130 km/h.", "Vitesse limitée à cent trente kilomètres à l'heure."),
    ("Il fait -3 °C.", "Il fait moins trois degrés Celsius."),
    (f"Batterie à 85{NNBSP}%.", "Batterie à quatre-vingt-cinq pour cent."),
    ("Distance : 1,5 km.", "Distance : un virgule cinq kilomètre."),  # singular below two
    ("Recharge de 50 kW, 12,5 kWh.", "Recharge de cinquante kilowatts, douze virgule cinq kilowattheures."),
    ("Faites 40 L en 5 min.", "Faites quarante litres en cinq minutes."),
    ("Arrivée dans 1 h.", "Arrivée dans une heure."),
    ("Rendez-vous à 21 h.", "Rendez-vous à vingt et une heures."),
    ("Départ à 14h30 ou à 9:05.", "Départ à quatorze heures trente ou à neuf heures cinq."),
    ("Le stationnement coûte 12,50 €.", "Le stationnement coûte douze euros cinquante."),
    ("Péage : 1 € ou 2,40 $.", "Péage : un euro ou deux dollars quarante."),
    ("Le 1er mai et la 1re fois, la 2e sortie.", "Le premier mai et la première fois, la deuxième sortie."),
    ("Le 29/11/2026 ou le 2026-11-29.", "Le vingt-neuf novembre deux mille vingt-six ou le vingt-neuf novembre "
                                        "deux mille vingt-six."),
    ("Le 01.03.2027", "Le premier mars deux mille vingt-sept."),
    ("Prenez l'A7 puis la N7 et la sortie 12a.", "Prenez l'A sept puis la N sept et la sortie douze A."),
    ("Rue St-Honoré, bd Haussmann, av. Foch.", "Rue Saint-Honoré, boulevard Haussmann, avenue Foch."),
    ("Mme Dupont habite pl. de la Concorde.", "Madame Dupont habite place de la Concorde."),
    ("Il y a 1 234 567 habitants et 10-12 bouchons.", "Il y a un million deux cent trente-quatre mille cinq cent "
                                                      "soixante-sept habitants et dix à douze bouchons."),
    ("**Attention** : travaux\n\n- Voie de gauche fermée", "Attention : travaux. Voie de gauche fermée."),
    ("Infos sur https://trafic.example.fr 🚧", "Infos sur lien."),
    ("Vraiment ?!!", "Vraiment ?"),  # French keeps its space before ? and !
    ("M. Martin arrive", "Monsieur Martin arrive."),
    ("Dans 21 minutes", "Dans vingt et une minutes."),
    ("Il reste 2,5 L.", "Il reste deux virgule cinq litres."),
]

ES = [  # generic words of street names in lowercase, as the RAE writes them
    ("En 200 m, gire a la derecha.", "En doscientos metros, gire a la derecha."),
    ("Queda 1 km.", "Queda un kilómetro."),
    ("Límite: 120 km/h.", "Límite: ciento veinte kilómetros por hora."),
    ("Hace -3 °C.", "Hace menos tres grados Celsius."),
    ("Batería al 85 %.", "Batería al ochenta y cinco por ciento."),
    ("Faltan 1,5 km.", "Faltan uno coma cinco kilómetros."),
    ("Cargue 40 L en 5 min.", "Cargue cuarenta litros en cinco minutos."),
    ("Llegada en 1 h.", "Llegada en una hora."),
    ("Son 200 millas y 21 km.", "Son doscientas millas y veintiún kilómetros."),
    ("A las 14:30 o a la 1:05.", "A las catorce y treinta o a la una y cinco."),
    ("A las 21:00.", "A las veintiuna."),
    ("Cuesta 12,50 €.", "Cuesta doce euros con cincuenta."),
    ("Pague $3.", "Pague tres dólares."),
    ("El 1.º de mayo, la 1.ª salida y el 1.er piso.", "El primero de mayo, la primera salida y el primer piso."),
    ("El 29/11/2026.", "El veintinueve de noviembre de dos mil veintiséis."),
    ("El 2026-11-29.", "El veintinueve de noviembre de dos mil veintiséis."),
    ("Tome la A-7 y la salida 12a.", "Tome la A siete y la salida doce A."),
    ("Vivo en la Avda. de América con el Sr. García.", "Vivo en la avenida de América con el señor García."),
    ("C/ Mayor, 5", "calle Mayor, cinco."),
    ("Hay 1.234.567 coches y 10-12 carriles.", "Hay un millón doscientos treinta y cuatro mil quinientos sesenta y "
                                               "siete coches y diez a doce carriles."),
    ("# Aviso\n*Obras* en la vía", "Aviso. Obras en la vía."),
    ("Más en https://dgt.example.es 🚦", "Más en enlace."),
    ("¡¡Cuidado!!", "¡Cuidado!"),
    ("El Dr. López", "El doctor López."),
    ("Son 2 horas y 1 semana", "Son dos horas y una semana."),
]

PT = [  # Brazilian Portuguese
    ("Em 200 m, vire à direita.", "Em duzentos metros, vire à direita."),
    ("Falta 1 km.", "Falta um quilômetro."),
    ("Limite: 110 km/h.", "Limite: cento e dez quilômetros por hora."),
    ("Faz -3 °C.", "Faz menos três graus Celsius."),
    ("Bateria em 85 %.", "Bateria em oitenta e cinco por cento."),
    ("Faltam 2,5 km.", "Faltam dois vírgula cinco quilômetros."),
    ("Abasteça 40 L em 5 min.", "Abasteça quarenta litros em cinco minutos."),
    ("Chegada em 1 h ou 2 h.", "Chegada em uma hora ou duas horas."),
    ("São 200 milhas.", "São duzentas milhas."),
    ("Às 14:30 ou às 9h05.", "Às catorze e trinta ou às nove e cinco."),
    ("Às 21:00.", "Às vinte e uma horas."),
    ("Custa 12,50 €.", "Custa doze euros e cinquenta centavos."),
    ("Pague $3.", "Pague três dólares."),
    ("A 1ª saída e o 2º andar.", "A primeira saída e o segundo andar."),
    ("Em 29/11/2026.", "Em vinte e nove de novembro de dois mil e vinte e seis."),
    ("Em 2026-11-01.", "Em primeiro de novembro de dois mil e vinte e seis."),
    ("Pegue a BR-101 e a saída 12a.", "Pegue a BR cento e um e a saída doze A."),
    ("Av. Paulista com R. Augusta", "Avenida Paulista com Rua Augusta."),
    ("O Dr. Silva mora na Pça. da Sé.", "O doutor Silva mora na Praça da Sé."),
    ("São 1.234.567 carros e 10-12 faixas.", "São um milhão duzentos e trinta e quatro mil quinhentos e sessenta e "
                                             "sete carros e dez a doze faixas."),
    ("**Atenção**: obras\n- Faixa fechada", "Atenção: obras. Faixa fechada."),
    ("Veja https://x.example.br 🚗", "Veja link."),
    ("Sério??", "Sério?"),
    ("Faltam 2 pessoas e 1 semana", "Faltam duas pessoas e uma semana."),
]

IT = [
    ("Tra 200 m, svoltare a destra.", "Tra duecento metri, svoltare a destra."),
    ("Manca 1 km.", "Manca un chilometro."),
    ("Limite: 130 km/h.", "Limite: centotrenta chilometri orari."),
    ("Ci sono -3 °C.", "Ci sono meno tre gradi Celsius."),
    ("Batteria all'85 %.", "Batteria all'ottantacinque per cento."),
    ("Mancano 2,5 km.", "Mancano due virgola cinque chilometri."),
    ("Fare 40 L in 5 min.", "Fare quaranta litri in cinque minuti."),
    ("Arrivo tra 1 h.", "Arrivo tra un'ora."),
    ("Sono 3 mi, 1 ft.", "Sono tre miglia, un piede."),
    ("Alle 14:30 o alle 9:05.", "Alle quattordici e trenta o alle nove e cinque."),
    ("Alle 21:00.", "Alle ventuno."),
    ("Costa 12,50 €.", "Costa dodici euro e cinquanta."),
    ("Costa 1 €.", "Costa un euro."),
    ("Il 1º maggio e la 1ª uscita.", "Il primo maggio e la prima uscita."),
    ("Il 29/11/2026.", "Il ventinove novembre duemilaventisei."),
    ("Il 2026-11-01.", "Il primo novembre duemilaventisei."),
    ("Prendere la A1 e la SS1, uscita 12a.", "Prendere la A uno e la SS uno, uscita dodici A."),
    ("Abito in P.za Garibaldi, vicino a C.so Italia.", "Abito in Piazza Garibaldi, vicino a Corso Italia."),
    ("Il Dott. Rossi e il Sig. Bianchi", "Il dottor Rossi e il signor Bianchi."),
    ("Ci sono 1.234.567 auto e 10-12 corsie.", "Ci sono un milione duecentotrentaquattromilacinquecentosessantasette "
                                               "auto e dieci a dodici corsie."),
    ("## Avviso\n- Corsia **chiusa**", "Avviso. Corsia chiusa."),
    ("Vedi https://x.example.it 🚧", "Vedi link."),
    ("Attenzione!!!", "Attenzione!"),
    ("Tra 1 ora", "Tra un'ora."),
]

NL = [  # numbers written together up to duizend, with a space after it (Taalunie)
    ("Over 200 m rechtsaf.", "Over tweehonderd meter rechtsaf."),
    ("Nog 1 km.", "Nog één kilometer."),
    ("Maximaal 100 km/h.", "Maximaal honderd kilometer per uur."),
    ("Het is -3 °C.", "Het is min drie graden Celsius."),
    ("Accu op 85 %.", "Accu op vijfentachtig procent."),
    ("Nog 2,5 km.", "Nog twee komma vijf kilometer."),
    ("Tank 40 L in 5 min.", "Tank veertig liter in vijf minuten."),
    ("Aankomst over 1 h, na 1 min.", "Aankomst over één uur, na één minuut."),
    ("Om 14:30 of 9:05.", "Om veertien uur dertig of negen uur vijf."),
    ("Om 21:00.", "Om eenentwintig uur."),
    ("Parkeren kost € 12,50.", "Parkeren kost twaalf euro vijftig."),
    ("Het kost 1 €.", "Het kost één euro."),
    ("De 1e afslag en de 2de straat, de 8ste keer.", "De eerste afslag en de tweede straat, de achtste keer."),
    ("Op 29-11-2026.", "Op negenentwintig november tweeduizend zesentwintig."),
    ("Op 2026-11-29.", "Op negenentwintig november tweeduizend zesentwintig."),
    ("Neem de A2 en de N201, afrit 12a.", "Neem de A twee en de N tweehonderdeen, afrit twaalf A."),
    ("Ga naar de Kalverstr. bij dhr. Jansen.", "Ga naar de Kalverstraat bij de heer Jansen."),
    ("Er zijn 1.234.567 auto's en 10-12 rijstroken.", "Er zijn een miljoen tweehonderdvierendertigduizend "
                                                      "vijfhonderdzevenenzestig auto's en tien tot twaalf rijstroken."),
    ("# Let op\n- Rijstrook **dicht**", "Let op. Rijstrook dicht."),
    ("Zie https://x.example.nl 🚗", "Zie link."),
    ("Pas op!!!", "Pas op!"),
    ("bijv. morgen", "bijvoorbeeld morgen."),
    ("Hoe laat is het???", "Hoe laat is het?"),
]

DE = [
    ("In 200 m rechts abbiegen.", "In zweihundert Metern rechts abbiegen."),  # dative after "in"
    ("Noch 1 km.", "Noch ein Kilometer."),
    ("Höchstens 130 km/h.", "Höchstens hundertdreißig Kilometer pro Stunde."),
    ("Es hat -3 °C.", "Es hat minus drei Grad Celsius."),
    ("Akku bei 85 %.", "Akku bei fünfundachtzig Prozent."),
    ("Noch 2,5 km.", "Noch zwei Komma fünf Kilometer."),
    ("Tanken Sie 40 L in 5 min.", "Tanken Sie vierzig Liter in fünf Minuten."),
    ("Ankunft in 1 h.", "Ankunft in einer Stunde."),
    ("Um 21 Uhr oder um 14:30 Uhr.", "Um einundzwanzig Uhr oder um vierzehn Uhr dreißig."),
    ("Um 9.05 Uhr und um 1 Uhr.", "Um neun Uhr fünf und um ein Uhr."),
    ("Parken kostet 12,50 €.", "Parken kostet zwölf Euro fünfzig."),
    ("Nur 1 €.", "Nur ein Euro."),
    ("Nehmen Sie die 2. Ausfahrt.", "Nehmen Sie die zweite Ausfahrt."),
    ("Am 3. Oktober.", "Am dritten Oktober."),
    ("Der 29.11.2026 ist ein Sonntag.", "Der neunundzwanzigste November zweitausendsechsundzwanzig ist ein Sonntag."),
    ("Fällig am 2026-11-29.", "Fällig am neunundzwanzigsten November zweitausendsechsundzwanzig."),
    ("Auf der A 7 und der B 27, Ausfahrt 12a.", "Auf der A sieben und der B siebenundzwanzig, Ausfahrt zwölf A."),
    ("Hauptstr. 5, Marktpl., Hbf.", "Hauptstraße fünf, Marktplatz, Hauptbahnhof."),
    ("Es gibt 1.234.567 Autos und 10-12 Spuren.", "Es gibt eine Million zweihundertvierunddreißigtausendfünfhundert"
                                                  "siebenundsechzig Autos und zehn bis zwölf Spuren."),
    ("z. B. morgen, ca. 5 km", "zum Beispiel morgen, circa fünf Kilometer."),
    ("## Achtung\n- Spur **gesperrt**", "Achtung. Spur gesperrt."),
    ("Siehe https://x.example.de 🚗", "Siehe Link."),
    ("Hr. Müller kommt", "Herr Müller kommt."),
    ("Vorsicht!!!", "Vorsicht!"),
    ("Das kostet 3. Dann gehen wir.", "Das kostet drei. Dann gehen wir."),  # a number that ends a sentence
]

HI = [
    ("200 मीटर बाद दाएँ मुड़ें", "दो सौ मीटर बाद दाएँ मुड़ें।"),
    ("1 km बाद", "एक किलोमीटर बाद।"),
    ("गति सीमा 80 km/h है", "गति सीमा अस्सी किलोमीटर प्रति घंटा है।"),
    ("तापमान -3 °C है", "तापमान माइनस तीन डिग्री सेल्सियस है।"),
    ("बैटरी 85 % है", "बैटरी पचासी प्रतिशत है।"),
    ("दूरी 2.5 km है", "दूरी दो दशमलव पाँच किलोमीटर है।"),
    ("40 L पेट्रोल 5 min में", "चालीस लीटर पेट्रोल पाँच मिनट में।"),
    ("1 h लगेगा, 2 h नहीं", "एक घंटा लगेगा, दो घंटे नहीं।"),
    ("14:30 बजे पहुँचें", "चौदह बजकर तीस मिनट पहुँचें।"),
    ("9:00 बजे", "नौ बजे।"),
    ("किराया ₹1,23,456 है", "किराया एक लाख तेईस हज़ार चार सौ छप्पन रुपये है।"),
    ("₹12.50", "बारह रुपये पचास पैसे।"),
    ("₹1", "एक रुपया।"),
    ("29/11/2026 को", "उनतीस नवंबर दो हज़ार छब्बीस को।"),
    ("2026-11-29 को", "उनतीस नवंबर दो हज़ार छब्बीस को।"),
    ("NH 48 लें, निकास 12a", "NH अड़तालीस लें, निकास बारह A।"),
    ("डॉ. शर्मा", "डॉक्टर शर्मा।"),
    ("१२ किमी", "बारह किलोमीटर।"),
    ("10-12 km", "दस से बारह किलोमीटर।"),
    ("https://x.example.in देखें 🚗", "लिंक देखें।"),
    ("**ध्यान दें**\n- सड़क बंद है", "ध्यान दें। सड़क बंद है।"),
    ("रुको!!!", "रुको!"),
    ("1,000 लोग", "एक हज़ार लोग।"),
    ("99 और 100", "निन्यानबे और एक सौ।"),
    ("10000000", "एक करोड़।"),
]

AR = [  # Modern Standard Arabic, unvocalized, nominative
    ("المسافة 200 م", "المسافة مئتا متر."),
    ("المسافة 1 كم", "المسافة كيلومتر واحد."),
    ("المسافة 2 كم", "المسافة كيلومتران."),
    ("المسافة 5 كم", "المسافة خمسة كيلومترات."),
    ("المسافة 15 كم", "المسافة خمسة عشر كيلومترا."),
    ("الحرارة -3 °C", "الحرارة سالب ثلاث درجات مئوية."),
    ("البطارية 85 %", "البطارية خمسة وثمانون في المئة."),
    ("بعد 5 min", "بعد خمس دقائق."),
    ("المدة 1 h", "المدة ساعة واحدة."),
    ("المدة 2 h", "المدة ساعتان."),
    ("السعر 12.50 €", "السعر اثنا عشر يورو وخمسون سنتا."),
    ("السعر $3", "السعر ثلاثة دولارات."),
    ("الساعة 9:00", "الساعة التاسعة."),
    ("الساعة 14:30", "الساعة الثانية والنصف."),
    ("الساعة 8:15", "الساعة الثامنة والربع."),
    ("الساعة 10:05", "الساعة العاشرة وخمس دقائق."),
    ("خذ الطريق E11 والمخرج 12a", "خذ الطريق E أحد عشر والمخرج اثنا عشر A."),
    ("د. أحمد في ش. الملك فهد", "الدكتور أحمد في شارع الملك فهد."),
    ("https://x.example.sa للمزيد 🚗", "رابط للمزيد."),
    ("١٢ كم", "اثنا عشر كيلومترا."),
    ("3-5", "ثلاثة إلى خمسة."),
    ("1.5 كم", "واحد فاصلة خمسة كيلومتر."),
    ("**تنبيه**\n- الطريق مغلق", "تنبيه. الطريق مغلق."),
    ("انتبه!!! هل وصلت؟؟", "انتبه! هل وصلت؟"),
    ("1,000 سيارة", "ألف سيارة."),
]

TABLES = {"en": EN, "fr": FR, "es": ES, "pt": PT, "it": IT, "nl": NL, "de": DE, "hi": HI, "ar": AR}


def test_every_language_has_a_table_of_twenty():
    assert sorted(TABLES) == sorted(LANGUAGES)
    assert all(len(pairs) >= 20 for pairs in TABLES.values())


@pytest.mark.parametrize("lang,text,expected", [(lang, t, e) for lang, pairs in TABLES.items() for t, e in pairs])
def test_spoken_as_the_language_says_it(lang, text, expected):
    assert normalize(text, lang) == expected


# -- Hindi numbers against CLDR ----------------------------------------------------------------------------
# Unicode CLDR, common/rbnf/hi.xml, ruleset "spellout-cardinal": 0-99 are listed word by word, then
# "←← सौ[ →→]" (100), "←← हजार[ →→]" (1000), "←← लाख[ →→]" (10^5), "←← करोड़[ →→]" (10^7). Copied here
# for a sample of values; the rules give the compounds below.
CLDR_HINDI = {
    0: "शून्य", 1: "एक", 5: "पाँच", 6: "छह", 9: "नौ", 11: "ग्यारह", 15: "पन्द्रह", 18: "अठारह", 19: "उन्नीस",
    21: "इक्कीस", 25: "पच्चीस", 29: "उनतीस", 33: "तैंतीस", 38: "अड़तीस", 39: "उनतालीस", 44: "चौवालीस",
    46: "छियालीस", 49: "उनचास", 51: "इक्यावन", 53: "तिरेपन", 59: "उनसठ", 63: "तिरेसठ", 67: "सड़सठ",
    69: "उनहत्तर", 73: "तिहत्तर", 78: "अठहत्तर", 79: "उनासी", 82: "बयासी", 89: "नवासी", 91: "इक्यानबे",
    95: "पंचानबे", 98: "अट्ठानबे", 99: "निन्यानबे",
    100: "एक सौ", 101: "एक सौ एक", 250: "दो सौ पचास", 1000: "एक हजार", 1999: "एक हजार नौ सौ निन्यानबे",
    100000: "एक लाख", 123456: "एक लाख तेईस हजार चार सौ छप्पन", 10**7: "एक करोड़",
    12345678: "एक करोड़ तेईस लाख पैंतालीस हजार छह सौ अठहत्तर", 10**9: "एक सौ करोड़",
}


def fold_hindi(s: str) -> str:
    """Spelling variants that read the same: the nukta (हज़ार/हजार) and a nasal consonant before a consonant
    written as anusvara (पन्द्रह/पंद्रह, the Central Hindi Directorate's standard)."""
    s = unicodedata.normalize("NFD", s).replace("\u093c", "")
    return re.sub("[नमणङञ]\u094d(?=[\u0915-\u0939])", "\u0902", s)


@pytest.mark.parametrize("n", sorted(CLDR_HINDI))
def test_hindi_cardinals_match_cldr(n):
    assert fold_hindi(hindi_cardinal(n)) == fold_hindi(CLDR_HINDI[n])


def test_voice_language():
    assert [voice_language(v) for v in ("fr_female", "de_male", "hi_female", "ar_male", "casual_male",
                                        "neutral_female", "cheerful_female", "nobody", "")] == [
        "fr", "de", "hi", "ar", "en", "en", "en", "en", "en"]


# -- properties ----------------------------------------------------------------------------------------------
PIECES = ["200 m", "1 km", "-3 °C", "14:30", "2:30 pm", "9h30", "29.11.2026", "2026-11-29", "29/11/2026",
          "€12.50", "12,50 €", "85 %", "1st", "1er", "1.º", "2.", "A7", "I-95", "B 27", "exit 12a", "St.", "Dr.",
          "Str.", "bd", "**", "_", "`", "# ", "- ", "1. ", "[a](b)", "<b>", "&amp;", "https://x.y/z", "\n", "\n\n",
          "!!!", "??", "...", "😀", "👍🏽", "\u200b", "\u00a0", "\u202f", "१२", "١٢", "٫"]
MIXED = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=25).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), MIXED), st.sampled_from(LANGUAGES))
def test_never_raises_and_is_idempotent(text, lang):
    once = normalize(text, lang)
    assert isinstance(once, str)
    assert normalize(once, lang) == once


LONG = [" " * 3000 + "x" + "!" * 3000 + "ab" * 1500 + "\n" * 500 + "9" * 1000, "9" * 5000, "1," * 3000,
        "St. " * 500, "[a](" * 1000, "**" * 2000 + "a", " \t" * 2000 + "#", "| --- |" * 500, "€" + "1" * 100]


@pytest.mark.parametrize("text", LONG, ids=range(len(LONG)))
def test_long_and_odd_inputs(text):
    for lang in LANGUAGES:
        once = normalize(text, lang)
        assert normalize(once, lang) == once


# Letters of scripts no rule reads (Greek, Cyrillic, Hebrew, Thai, CJK, Georgian): kept, in order, exactly.
FOREIGN = "αβγΔΩабвЖЯאבגกขค本字한글ამ"
FOREIGN_TEXT = st.text(st.sampled_from(FOREIGN + string.digits + " .,!?-:%/€$°\n"), max_size=120)


@settings(max_examples=300, deadline=None)
@given(FOREIGN_TEXT, st.sampled_from(LANGUAGES))
def test_letters_it_does_not_read_are_kept(text, lang):
    keep = lambda s: [c for c in s if c in FOREIGN]  # noqa: E731
    assert keep(normalize(text, lang)) == keep(text)


# Words of five letters or more from the nine languages' scripts are not abbreviations: their letters all
# survive, in order (numbers spelled around them only add letters).
WORD = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzéüßçñABCDEFGHIJKLMNOPQRSTUVWXYZकखगमनरसابتثجحد"), min_size=5,
               max_size=9)
WORDS_TEXT = st.lists(st.one_of(WORD, st.sampled_from(["12", "3,5", " ", ", ", "! ", "\n"])), max_size=15).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(WORDS_TEXT, st.sampled_from(LANGUAGES))
def test_words_are_kept(text, lang):
    out = iter(normalize(text, lang).casefold())
    assert all(c in out for c in text.casefold() if c.isalpha())  # a subsequence


# -- the runtime and the CLI ---------------------------------------------------------------------------------
NAVIGATION = {"en": "In 200 m, turn right onto the A7 (exit 12a) at 14:30.",
              "fr": "Dans 200 m, tournez à droite sur l'A7, sortie 12a, à 14h30.",
              "de": "In 200 m rechts auf die B 27 abbiegen, um 14:30 Uhr."}


def test_the_runtime_speaks_the_normalized_text(tiny_bundle_dirs):
    from voxtral_edge.runtime import Synthesizer

    synth = Synthesizer.open(tiny_bundle_dirs[0])
    text = NAVIGATION["fr"]
    spoken = normalize(text, "fr")
    result = synth.synthesize(text, "fr_female", seed=3, max_frames=4)  # the voice's language: fr
    assert result.spoken_text == spoken and result.prompt_tokens == len(synth.prompt(spoken, "fr_female"))
    same = synth.synthesize(spoken, "fr_female", seed=3, max_frames=4, normalize=False)
    np.testing.assert_array_equal(result.codes, same.codes)
    raw = synth.synthesize(text, "fr_female", seed=3, max_frames=4, normalize=False)
    assert raw.spoken_text == text and raw.prompt_tokens == len(synth.prompt(text, "fr_female"))
    german = synth.synthesize(NAVIGATION["de"], "casual_male", seed=3, max_frames=1, lang="de")
    assert german.spoken_text == normalize(NAVIGATION["de"], "de")
    streamed = list(synth.stream(text, "fr_female", seed=3, max_frames=4))
    assert synth.last_result.spoken_text == spoken and sum(map(len, streamed)) == len(result.audio)
    with pytest.raises(Exception, match="lang 'xx': expected one of en, fr"):
        synth.synthesize(text, "fr_female", lang="xx")
    with pytest.raises(Exception, match="nothing is left to speak once normalized"):
        synth.synthesize("🚗", "fr_female", seed=0)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_say_raw_speaks_the_text_as_written(capsys, tiny_bundle_dirs, tmp_path):
    from voxtral_edge.runtime import Synthesizer

    bundle, text = str(tiny_bundle_dirs[0]), NAVIGATION["en"]
    synth = Synthesizer.open(bundle)
    for flags, spoken in (([], normalize(text, "en")), (["--raw"], text), (["--lang", "de"], normalize(text, "de"))):
        codes = tmp_path / "codes.npy"
        code, _, err = run(capsys, "say", text, "--bundle", bundle, "--voice", "casual_male", "-o",
                           str(tmp_path / "x.wav"), "--seed", "1", "--max-frames", "3", "--dump-codes", str(codes),
                           *flags)
        assert code == 0, err
        want = synth.synthesize(spoken, "casual_male", seed=1, max_frames=3, normalize=False)
        assert f"for {want.prompt_tokens} tokens" in err
        np.testing.assert_array_equal(np.load(codes), want.codes)


def test_normalize_command_prints_what_is_spoken(capsys, monkeypatch):
    import io
    import sys

    for lang, text in NAVIGATION.items():
        code, out, _ = run(capsys, "normalize", "--lang", lang, text)
        assert code == 0 and out == normalize(text, lang) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Nog 1 km.\n".encode())))
    code, out, _ = run(capsys, "normalize", "-", "--lang", "nl")
    assert code == 0 and out == "Nog één kilometer.\n"
    with pytest.raises(SystemExit):
        main(["normalize", "--lang", "xx", "Hi"])


def test_prompt_of_a_normalized_text_is_mistral_commons(capsys, tiny_checkpoint_dir):
    from mistral_common.protocol.speech.request import SpeechRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from voxtral_edge.tekken import Tekken

    tekken_path = tiny_checkpoint_dir / "tekken.json"
    oracle = MistralTokenizer.from_file(str(tekken_path))
    tekken = Tekken.from_file(tekken_path)
    for voice, lang in (("casual_male", "en"), ("fr_female", "fr"), ("neutral_female", "de")):
        text = NAVIGATION[lang]
        spoken = normalize(text, lang)
        expected = oracle.encode_speech_request(SpeechRequest(input=spoken, voice=voice)).tokens
        code, out, _ = run(capsys, "prompt", "--checkpoint", str(tiny_checkpoint_dir), "--voice", voice, "--normalize",
                           "--lang", lang, text)
        assert code == 0 and json.loads(out) == expected
        raw = oracle.encode_speech_request(SpeechRequest(input=text, voice=voice)).tokens
        code, out, _ = run(capsys, "prompt", "--checkpoint", str(tiny_checkpoint_dir), "--voice", voice, text)
        assert code == 0 and json.loads(out) == raw != expected  # without --normalize: the text as written
        code, out, _ = run(capsys, "tokens", "--tokenizer", str(tekken_path), "--normalize", "--lang", lang, text)
        assert code == 0 and json.loads(out) == tekken.encode(spoken)
    # --normalize without --lang: the voice's language for prompt
    code, out, _ = run(capsys, "prompt", "--checkpoint", str(tiny_checkpoint_dir), "--voice", "fr_female",
                       "--normalize", NAVIGATION["fr"])
    assert json.loads(out) == oracle.encode_speech_request(
        SpeechRequest(input=normalize(NAVIGATION["fr"], "fr"), voice="fr_female")).tokens
